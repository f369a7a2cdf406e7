//! The HTML report: one self-contained page (inline CSS and SVG, no
//! script or font from elsewhere) with the tables and four plots: latency
//! percentiles over time, throughput over time, error rate over time, and
//! the distribution of the time to first token.

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::report::{Report, ReportError};
use crate::stats::Bucket;

type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn line_chart(title: &str, y_label: &str, series: &[Series<'_>]) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 300)).into_drawing_area();
        root.fill(&WHITE)?;
        let points = series.iter().flat_map(|(_, _, points)| points.iter());
        let (max_x, max_y) = points.fold((1.0f64, 0.0f64), |(x, y), point| (x.max(point.0), y.max(point.1)));
        let max_y = if max_y > 0.0 { max_y * 1.1 } else { 1.0 };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(38)
            .y_label_area_size(62)
            .build_cartesian_2d(0f64..max_x, 0f64..max_y)?;
        chart.configure_mesh().x_desc("seconds into the measurement").y_desc(y_label).draw()?;
        for (name, color, points) in series {
            let color = *color;
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
        root.present()?;
    }
    Ok(svg)
}

fn bar_chart(title: &str, buckets: &[Bucket]) -> Result<String, ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 300)).into_drawing_area();
        root.fill(&WHITE)?;
        let width = match buckets {
            [first, second, ..] => second.upper_ms - first.upper_ms,
            _ => 1.0,
        };
        let low = buckets.first().map_or(0.0, |bucket| bucket.upper_ms - width);
        let high = buckets.last().map_or(1.0, |bucket| bucket.upper_ms);
        let most = buckets.iter().map(|bucket| bucket.count).max().unwrap_or(1).max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(38)
            .y_label_area_size(62)
            .build_cartesian_2d(low..high.max(low + 1e-3), 0f64..most * 1.1)?;
        chart.configure_mesh().x_desc("time to first token, ms").y_desc("streams").draw()?;
        chart.draw_series(buckets.iter().map(|bucket| {
            Rectangle::new(
                [(bucket.upper_ms - width, 0.0), (bucket.upper_ms, bucket.count as f64)],
                BLUE.mix(0.6).filled(),
            )
        }))?;
        root.present()?;
    }
    Ok(svg)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn figure(out: &mut String, plot: &str, caption: &str, svg: &str) {
    let _ = write!(
        out,
        "<figure data-plot=\"{plot}\">{svg}<figcaption>{}</figcaption></figure>",
        escape(caption)
    );
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1100px}\
table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\
th:first-child,td:first-child{text-align:left}.fail{color:#b00;font-weight:bold}.pass{color:#070}\
figure{margin:16px 0}figcaption{font-size:13px;color:#555}";

/// Marks each plot that the browser laid out with marks in it, so a
/// headless browser's DOM dump shows the plots rendered.
const CHECK: &str = "window.addEventListener('load',function(){var n=0;\
document.querySelectorAll('figure[data-plot]').forEach(function(f){var s=f.querySelector('svg');\
if(!s)return;var b=s.getBoundingClientRect();var m=s.querySelectorAll('polyline,path,rect,line').length;\
if(b.width>0&&b.height>0&&m>0){f.setAttribute('data-rendered','yes');n++;}});\
document.body.setAttribute('data-plots-rendered',String(n));});";

/// The whole page.
pub fn html(report: &Report) -> Result<String, ReportError> {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>blaze-load: {}</title><style>{STYLE}</style></head><body>",
        escape(&report.scenario)
    );
    let _ = write!(
        out,
        "<h1>{}</h1><p>{}</p><p>Target {} &middot; started {} &middot; {:.1} s measured after {:.1} s of warm-up &middot; stopped by {} &middot; peak connections {}</p>",
        escape(&report.scenario),
        escape(&report.description),
        escape(&report.target),
        escape(&report.started_at),
        report.measured_s,
        report.warmup_s,
        escape(&report.stopped_by),
        report.peak_connections
    );
    out.push_str("<h2>Requests</h2><table><tr><th>request</th><th>requests</th><th>rate/s</th><th>errors</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>bytes sent</th><th>bytes received</th></tr>");
    for summary in report.requests.iter().chain(std::iter::once(&report.total)) {
        let latency = &summary.latency_ms;
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td></tr>",
            escape(&summary.name),
            summary.requests,
            summary.rate_per_s,
            summary.errors,
            latency.p50,
            latency.p90,
            latency.p99,
            latency.p99_9,
            latency.max,
            summary.bytes_sent,
            summary.bytes_received
        );
    }
    out.push_str("</table>");
    let errors: Vec<(String, String, u64)> = report
        .requests
        .iter()
        .flat_map(|summary| {
            summary.errors_by_kind.iter().map(|(kind, count)| (summary.name.clone(), kind.clone(), *count))
        })
        .collect();
    if !errors.is_empty() {
        out.push_str("<h2>Errors</h2><table><tr><th>request</th><th>kind</th><th>count</th></tr>");
        for (request, kind, count) in errors {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{count}</td></tr>",
                escape(&request),
                escape(&kind)
            );
        }
        out.push_str("</table>");
    }
    if report.requests.iter().any(|summary| summary.stream.is_some()) {
        out.push_str("<h2>Streams</h2><table><tr><th>request</th><th>tokens</th><th>first token p50 ms</th><th>first token p99 ms</th><th>between tokens p50 ms</th><th>between tokens p99 ms</th><th>tokens/s a stream p50</th></tr>");
        for summary in &report.requests {
            if let Some(stream) = &summary.stream {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.1}</td></tr>",
                    escape(&summary.name),
                    stream.tokens,
                    stream.ttft_ms.p50,
                    stream.ttft_ms.p99,
                    stream.inter_token_ms.p50,
                    stream.inter_token_ms.p99,
                    stream.tokens_per_s.p50
                );
            }
        }
        out.push_str("</table>");
    }
    if let Some(baseline) = &report.baseline {
        let _ = write!(
            out,
            "<h2>Against the baseline</h2><p>{} on {}: {:.0} requests/s, p50 {:.3} ms, p99 {:.3} ms</p><table><tr><th>request</th><th>rate</th><th>p50</th><th>p99</th></tr>",
            escape(&baseline.scenario),
            escape(&baseline.target),
            baseline.rate_per_s,
            baseline.p50_ms,
            baseline.p99_ms
        );
        for ratio in &baseline.ratios {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{:.3}x</td><td>{:.2}x</td><td>{:.2}x</td></tr>",
                escape(&ratio.request),
                ratio.rate,
                ratio.p50,
                ratio.p99
            );
        }
        out.push_str("</table>");
    }
    if !report.thresholds.is_empty() {
        out.push_str("<h2>Thresholds</h2><table><tr><th>request</th><th>metric</th><th>limit</th><th>value</th><th>result</th></tr>");
        for result in &report.thresholds {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{:?}</td><td>{} {}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                escape(result.request.as_deref().unwrap_or("all")),
                result.metric,
                if result.bound == "max" { "&le;" } else { "&ge;" },
                result.limit,
                result.value.map_or_else(|| "nothing measured".to_owned(), |value| format!("{value:.3}")),
                if result.passed { "pass" } else { "fail" },
                if result.passed { "pass" } else { "FAIL" }
            );
        }
        out.push_str("</table>");
    }
    out.push_str("<h2>Over time</h2>");
    let timeline = &report.timeline;
    let points = |value: fn(&crate::stats::Tick) -> f64| {
        timeline.iter().map(|tick| (tick.t_s, value(tick))).collect::<Vec<_>>()
    };
    let latency = line_chart(
        "Latency percentiles",
        "ms",
        &[
            ("p50", RGBColor(31, 119, 180), points(|tick| tick.p50_ms)),
            ("p90", RGBColor(255, 127, 14), points(|tick| tick.p90_ms)),
            ("p99", RGBColor(214, 39, 40), points(|tick| tick.p99_ms)),
        ],
    )?;
    figure(&mut out, "latency", "Latency percentiles of the requests that ended in each second", &latency);
    let throughput = line_chart(
        "Throughput",
        "requests/s",
        &[("requests/s", RGBColor(44, 160, 44), points(|tick| tick.rate_per_s))],
    )?;
    figure(&mut out, "throughput", "Requests that ended in each second", &throughput);
    let errors = line_chart(
        "Error rate",
        "% of requests",
        &[(
            "errors",
            RGBColor(214, 39, 40),
            points(|tick| 100.0 * tick.errors as f64 / tick.requests.max(1) as f64),
        )],
    )?;
    figure(&mut out, "errors", "Share of the requests that ended in each second with an error", &errors);
    match report.total.stream.as_ref().filter(|stream| !stream.ttft_distribution.is_empty()) {
        Some(stream) => {
            let ttft = bar_chart("Time to first token", &stream.ttft_distribution)?;
            figure(&mut out, "ttft", "Streams by their time to first token (up to the p99.9)", &ttft);
        }
        None => out.push_str("<p>No streamed answers in this run: no time-to-first-token plot.</p>"),
    }
    let _ = write!(out, "<script>{CHECK}</script></body></html>");
    Ok(out)
}
