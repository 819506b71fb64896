//! Results on disk: `results.json` (everything), `results.csv` (one line per measured
//! group), `summary.md` (medians and spread over repetitions) and SVG plots drawn with
//! `plotters` — throughput and p99 latency against clients, one line per server, bars from the
//! slowest to the fastest repetition (a single client count gives bar charts instead).
//! `lair lab report DIR` rebuilds all but `results.json` from it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use crate::results::{Results, Row};

/// Read a results directory's `results.json`.
pub fn load(dir: &Path) -> anyhow::Result<Results> {
    let p = dir.join("results.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

/// Write every output for `r` into `dir`.
pub fn write(dir: &Path, r: &Results) -> anyhow::Result<()> {
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(r)?)?;
    rebuild(dir, r)
}

/// Write the CSV, the summary and the plots (everything derived from `results.json`).
pub fn rebuild(dir: &Path, r: &Results) -> anyhow::Result<()> {
    std::fs::write(dir.join("results.csv"), csv(&r.rows))?;
    let plots = plot_all(dir, r)?;
    std::fs::write(dir.join("summary.md"), summary(r, &plots))?;
    Ok(())
}

const CSV_HEAD: &str = "server,workload,environment,group,clients,rep,connections,requests,\
requests_per_s,mb_per_s,p50_us,p90_us,p99_us,p999_us,max_us,errors,server_user_s,\
server_system_s,server_cpu_us_per_req,server_voluntary_cs,server_involuntary_cs,\
server_rss_kib,client_cpu_s,cached_at_start,disk_reads,disk_depth";

fn csv(rows: &[Row]) -> String {
    let mut s = String::from(CSV_HEAD);
    s.push('\n');
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{:.1},{:.3},{},{},{},{},{},{},{:.3},{:.3},{:.2},{},{},{},{:.3},{:.3},{},{}",
            r.server,
            r.workload,
            r.environment,
            r.group,
            r.clients,
            r.rep,
            r.connections,
            r.requests,
            r.requests_per_s,
            r.mb_per_s,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.p999_us,
            r.max_us,
            r.errors,
            r.server_user_s,
            r.server_system_s,
            r.server_cpu_us_per_req,
            r.server_voluntary_cs,
            r.server_involuntary_cs,
            r.server_rss_kib,
            r.client_cpu_s,
            r.cached_at_start,
            r.disk_reads.map_or(String::new(), |d| d.to_string()),
            r.disk_depth.map_or(String::new(), |d| format!("{d:.1}")),
        );
    }
    s
}

/// Median, min and max of some numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

/// The spread of `v` (all zero if empty).
pub fn spread(mut v: Vec<f64>) -> Spread {
    if v.is_empty() {
        return Spread::default();
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Spread {
        median,
        min: v[0],
        max: v[n - 1],
    }
}

/// (workload, environment, group) → clients → server → its repetitions.
type Cells<'a> =
    BTreeMap<(String, String, String), BTreeMap<usize, BTreeMap<String, Vec<&'a Row>>>>;

fn cells(rows: &[Row]) -> Cells<'_> {
    let mut c: Cells<'_> = BTreeMap::new();
    for r in rows {
        c.entry((r.workload.clone(), r.environment.clone(), r.group.clone()))
            .or_default()
            .entry(r.clients)
            .or_default()
            .entry(r.server.clone())
            .or_default()
            .push(r);
    }
    c
}

fn server_order(r: &Results) -> Vec<String> {
    let mut names: Vec<String> = r
        .experiment
        .server_specs()
        .map(|v| v.into_iter().map(|s| s.name).collect())
        .unwrap_or_default();
    for row in &r.rows {
        if !names.contains(&row.server) {
            names.push(row.server.clone());
        }
    }
    names.retain(|n| r.rows.iter().any(|row| &row.server == n));
    names
}

/// Three significant figures or so: `12,345`, `123`, `12.3`, `1.23`. The precision is chosen
/// from the value as it will print, so `99.99999999999999` and `100.00000000000001` (one
/// figure computed in memory, the other read back from results.json) both print `100` — they
/// used to print `100.0` and `100`, and `lair lab report` rebuilt a different summary (found
/// by the flaky-test hunt of issue 12).
fn fmt_num(x: f64) -> String {
    if (x * 10.0).round() >= 1000.0 {
        let n = x.round() as u64;
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if (x * 100.0).round() >= 1000.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn summary(r: &Results, plots: &[String]) -> String {
    let x = &r.experiment;
    let mut s = String::new();
    let _ = writeln!(s, "# {}{}\n", x.name, if r.quick { " (quick)" } else { "" });
    if !x.description.is_empty() {
        let _ = writeln!(s, "{}\n", x.description);
    }
    let _ = writeln!(
        s,
        "Started {} on Linux {} ({} CPUs; {}), took {:.0} s. {} repetition(s) of {} per run \
         (trace passes run to their end), warm-up {} ms. Medians over repetitions, [min–max] \
         where there are several. Server CPU is user + system time of the server's processes \
         per response; context switches are per response too.\n",
        r.started,
        r.host.kernel,
        r.host.cpus,
        r.host.peers.join("; "),
        r.took_s,
        x.repetitions,
        format_args!("{} ms", x.duration.as_millis()),
        x.warmup.as_millis(),
    );
    if !r.notes.is_empty() {
        let _ = writeln!(s, "**Notes**\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
        s.push('\n');
    }
    let order = server_order(r);
    for ((w, e, g), by_clients) in cells(&r.rows) {
        let _ = writeln!(s, "## {w} / {e} / group {g}\n");
        let _ = writeln!(
            s,
            "| clients | server | req/s | MB/s | p50 ms | p99 ms | server CPU µs/req | vol. cs/req | errors | cached at start | disk reads |"
        );
        let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (clients, by_server) in &by_clients {
            for name in &order {
                let Some(reps) = by_server.get(name) else {
                    continue;
                };
                let f = |g: &dyn Fn(&Row) -> f64| spread(reps.iter().map(|r| g(r)).collect());
                let rps = f(&|r| r.requests_per_s);
                let mbs = f(&|r| r.mb_per_s);
                let p50 = f(&|r| r.p50_us as f64 / 1000.0);
                let p99 = f(&|r| r.p99_us as f64 / 1000.0);
                let cpu = f(&|r| r.server_cpu_us_per_req);
                let vcs = f(&|r| r.server_voluntary_cs as f64 / r.requests.max(1) as f64);
                let cached = f(&|r| r.cached_at_start);
                let errors: u64 = reps.iter().map(|r| r.errors).sum();
                let reads = reps
                    .iter()
                    .filter_map(|r| r.disk_reads)
                    .map(|d| d as f64)
                    .collect::<Vec<_>>();
                let depths = reps.iter().filter_map(|r| r.disk_depth).collect::<Vec<_>>();
                let range = |sp: Spread| {
                    if reps.len() > 1 {
                        format!(
                            "{} [{}–{}]",
                            fmt_num(sp.median),
                            fmt_num(sp.min),
                            fmt_num(sp.max)
                        )
                    } else {
                        fmt_num(sp.median)
                    }
                };
                let _ = writeln!(
                    s,
                    "| {clients} | {name} | {} | {} | {} | {} | {} | {} | {errors} | {:.0} % | {} |",
                    range(rps),
                    fmt_num(mbs.median),
                    fmt_num(p50.median),
                    range(p99),
                    fmt_num(cpu.median),
                    fmt_num(vcs.median),
                    cached.min * 100.0,
                    match (reads.is_empty(), depths.is_empty()) {
                        (true, _) => "–".into(),
                        (false, true) => fmt_num(spread(reads).median),
                        (false, false) => format!(
                            "{} (depth {:.1})",
                            fmt_num(spread(reads).median),
                            spread(depths).median
                        ),
                    },
                );
            }
        }
        s.push('\n');
        let prefix = plot_name(&w, &e, &g, "");
        for p in plots.iter().filter(|p| p.starts_with(&prefix)) {
            let _ = writeln!(s, "![{p}](plots/{p})\n");
        }
    }
    let by_size: Vec<&String> = plots.iter().filter(|p| p.starts_with("by-size-")).collect();
    if !by_size.is_empty() {
        let _ = writeln!(s, "## Against the body size\n");
        for p in by_size {
            let _ = writeln!(s, "![{p}](plots/{p})\n");
        }
    }
    s
}

fn plot_name(w: &str, e: &str, g: &str, what: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    format!("{}-{}-{}-{what}", clean(w), clean(e), clean(g))
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One line (or bar) per server: (clients, spread) points.
type Series = Vec<(String, Vec<(usize, Spread)>)>;

fn plot_all(dir: &Path, r: &Results) -> anyhow::Result<Vec<String>> {
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots)?;
    let order = server_order(r);
    let mut written = Vec::new();
    for ((w, e, g), by_clients) in cells(&r.rows) {
        type Metric = fn(&Row) -> f64;
        let metrics: [(&str, &str, Metric); 5] = [
            ("throughput", "responses per second", |r: &Row| {
                r.requests_per_s
            }),
            ("p99", "p99 response time (ms)", |r: &Row| {
                r.p99_us as f64 / 1000.0
            }),
            // Seed 000's Figs 12-14: mean response time, transmit rate, context switches.
            ("mean", "mean response time (ms)", |r: &Row| {
                r.mean_us / 1000.0
            }),
            ("transmit", "transmit rate (MB/s)", |r: &Row| r.mb_per_s),
            ("cs-per-mb", "server context switches per MB", |r: &Row| {
                let mb = r.mb_per_s * r.elapsed_s;
                (r.server_voluntary_cs + r.server_involuntary_cs) as f64 / mb.max(1e-9)
            }),
        ];
        for (what, label, metric) in metrics {
            let series: Series = order
                .iter()
                .map(|name| {
                    let pts = by_clients
                        .iter()
                        .filter_map(|(c, by_server)| {
                            by_server
                                .get(name)
                                .map(|reps| (*c, spread(reps.iter().map(|r| metric(r)).collect())))
                        })
                        .collect();
                    (name.clone(), pts)
                })
                .filter(|(_, pts): &(String, Vec<_>)| !pts.is_empty())
                .collect();
            let file = plot_name(&w, &e, &g, what) + ".svg";
            let title = format!("{w} / {e} / {g}: {label}");
            let path = plots.join(&file);
            if by_clients.len() > 1 {
                line_plot(&path, &title, "clients (log scale)", label, &series)
            } else {
                bar_plot(&path, &title, label, &series)
            }
            .with_context(|| format!("drawing {file}"))?;
            written.push(file);
        }
    }
    written.extend(plot_by_size(&plots, r, &order)?);
    Ok(written)
}

/// Each workload's single file size, if every workload is one fixed-size file.
fn fixed_sizes(r: &Results) -> Option<BTreeMap<String, u64>> {
    let mut sizes = BTreeMap::new();
    for w in &r.experiment.workloads {
        match &w.spec {
            Some(crate::workload::Spec::Fixed { bytes }) => sizes.insert(w.name.clone(), *bytes),
            _ => return None,
        };
    }
    (sizes.len() > 1).then_some(sizes)
}

/// An experiment over several fixed file sizes (`datapass`): each measure against the body
/// size, one line per server, per environment, group and client count.
fn plot_by_size(plots: &Path, r: &Results, order: &[String]) -> anyhow::Result<Vec<String>> {
    let Some(sizes) = fixed_sizes(r) else {
        return Ok(Vec::new());
    };
    type Metric = fn(&Row) -> f64;
    let metrics: [(&str, &str, Metric); 5] = [
        ("throughput", "responses per second", |r: &Row| {
            r.requests_per_s
        }),
        ("transmit", "MB/s", |r: &Row| r.mb_per_s),
        ("cpu-per-req", "server CPU per response (µs)", |r: &Row| {
            r.server_cpu_us_per_req
        }),
        (
            "user-per-req",
            "server user-space CPU per response (µs)",
            |r: &Row| r.server_user_s * 1e6 / (r.requests.max(1) as f64),
        ),
        ("cpu-per-mb", "server CPU per MB (ms)", |r: &Row| {
            let mb = r.mb_per_s * r.elapsed_s;
            (r.server_user_s + r.server_system_s) * 1e3 / mb.max(1e-9)
        }),
    ];
    let mut groups: BTreeMap<(String, String, usize), Vec<&Row>> = BTreeMap::new();
    for row in &r.rows {
        groups
            .entry((row.environment.clone(), row.group.clone(), row.clients))
            .or_default()
            .push(row);
    }
    let mut written = Vec::new();
    for ((e, g, c), rows) in groups {
        for (what, label, metric) in metrics {
            let series: Series = order
                .iter()
                .map(|name| {
                    let mut pts: Vec<(usize, Spread)> = sizes
                        .iter()
                        .filter_map(|(w, bytes)| {
                            let v: Vec<f64> = rows
                                .iter()
                                .filter(|r| &r.server == name && &r.workload == w)
                                .map(|r| metric(r))
                                .collect();
                            (!v.is_empty()).then(|| (*bytes as usize, spread(v)))
                        })
                        .collect();
                    pts.sort_by_key(|p| p.0);
                    (name.clone(), pts)
                })
                .filter(|(_, pts)| !pts.is_empty())
                .collect();
            let file = plot_name("by-size", &e, &g, &format!("{c}-{what}")) + ".svg";
            let title = format!("{e} / {g} / {c} clients: {label}");
            line_plot(
                &plots.join(&file),
                &title,
                "body size, bytes (log scale)",
                label,
                &series,
            )
            .with_context(|| format!("drawing {file}"))?;
            written.push(file);
        }
    }
    Ok(written)
}

fn line_plot(
    path: &Path,
    title: &str,
    xlabel: &str,
    label: &str,
    series: &Series,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let xs: Vec<usize> = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .collect();
    let (xmin, xmax) = (
        *xs.iter().min().unwrap_or(&1) as f64,
        *xs.iter().max().unwrap_or(&1) as f64,
    );
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1.max))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin.max(1.0)..xmax.max(xmin + 1.0)).log_scale(), 0.0..ymax)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc(xlabel)
        .y_desc(label)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|(c, s)| (*c as f64, s.median)),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|(c, s)| {
                ErrorBar::new_vertical(*c as f64, s.min, s.median, s.max, color.filled(), 8)
            }))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

fn bar_plot(path: &Path, title: &str, label: &str, series: &Series) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let n = series.len().max(1);
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1.max))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let names: Vec<String> = series.iter().map(|s| s.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, 0.0..ymax)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (*x - 0.5).round();
            if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(label)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for (i, (_, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let Some((_, s)) = pts.first() else { continue };
        let x0 = i as f64 + 0.15;
        let x1 = i as f64 + 0.85;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x1, s.median)],
                color.filled(),
            )))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        chart
            .draw_series(std::iter::once(ErrorBar::new_vertical(
                i as f64 + 0.5,
                s.min,
                s.median,
                s.max,
                BLACK.stroke_width(1),
                10,
            )))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        chart
            .draw_series(std::iter::once(Text::new(
                fmt_num(s.median),
                (i as f64 + 0.3, s.max + ymax * 0.03),
                ("sans-serif", 14),
            )))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_numbers() {
        assert_eq!(
            spread(vec![3.0, 1.0, 2.0]),
            Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(spread(vec![4.0, 1.0]).median, 2.5);
        assert_eq!(spread(vec![]), Spread::default());
        // Either side of a precision boundary prints the same.
        assert_eq!(fmt_num(99.99999999999999), fmt_num(100.00000000000001));
        assert_eq!(fmt_num(99.96), "100");
        assert_eq!(fmt_num(9.999), "10.0");
        assert_eq!(fmt_num(9.99), "9.99");
        assert_eq!(fmt_num(1234.4), "1,234");
        assert_eq!(fmt_num(1_234_567.4), "1,234,567");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(0.5), "0.50");
    }
}
