//! `pipe report`: one static HTML page over built stages: the resolved config (every
//! knob, non-defaults marked), the scorecard, each stage's metrics and artifacts, with
//! every image artifact (PNG, SVG, ...) shown inline.
//!
//! The page works opened from disk with no network: images are inlined as `data:`
//! URIs, styles and the one small script are inline, and a Content-Security-Policy
//! forbids loading anything else. Links to artifacts are relative
//! (`../out/<stage>/<name>`, the cache's copies of the latest build), so they work
//! from disk too. The page is deterministic: the same build gives the same bytes (no
//! timestamps, no absolute paths). Generic over stages: it shows whatever stages,
//! metrics, verdicts and artifacts the reports carry. Every inserted text is escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cache::ArtifactHash;
use workspace::{Config, KnobSpec, StageReport, VerdictStatus};

use crate::output::verdict_word;
use crate::scorecard::{number, Check, Scorecard};

/// Images larger than this are linked, not inlined (a page should stay openable).
const INLINE_IMAGE_MAX_BYTES: u64 = 8 << 20;
/// Text artifacts (JSON, CSV, ...) up to this size get a collapsed preview.
const PREVIEW_MAX_BYTES: u64 = 64 << 10;
/// A stage's metrics fill one table up to this many rows, then up to three side by side.
const METRIC_ROWS_MIN: usize = 12;

/// Where the page goes, inside the cache directory.
pub fn page_path(cache_root: &Path) -> PathBuf {
    cache_root.join("report").join("index.html")
}

/// Everything the page shows.
pub struct Page<'a> {
    /// What was asked for (`overfit`, or stage ids).
    pub targets: &'a [String],
    pub device: &'a str,
    /// The pipeline file's name (not its absolute path: the page is deterministic).
    pub pipeline: &'a str,
    pub schema: &'a [KnobSpec],
    pub config: &'a Config,
    /// One line of documentation per stage id.
    pub stage_docs: BTreeMap<&'static str, &'static str>,
    pub reports: &'a [StageReport],
}

/// The MIME type of an artifact a browser can show as an image, by extension.
fn image_type(name: &str) -> Option<&'static str> {
    let extension = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match extension.as_str() {
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        _ => return None,
    })
}

/// Whether an artifact is text worth previewing, by extension.
fn is_text(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(_, extension)| {
        matches!(extension.to_ascii_lowercase().as_str(), "json" | "txt" | "csv" | "md" | "toml")
    })
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Percent-encodes one path segment of a relative URL (`a b#1.png` -> `a%20b%231.png`).
fn url_segment(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// The link from `report/index.html` to the cache's copy of an artifact, `out/<stage>/<name>`.
pub fn artifact_href(stage: &str, name: &str) -> String {
    format!("../out/{}/{}", url_segment(stage), url_segment(name))
}

/// Standard base64 with padding, for `data:` URIs.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group = match *chunk {
            [a] => u32::from(a) << 16,
            [a, b] => (u32::from(a) << 16) | (u32::from(b) << 8),
            [a, b, c] => (u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(c),
            _ => unreachable!("chunks(3) yields 1 to 3 bytes"),
        };
        for index in 0..4 {
            if index <= chunk.len() {
                text.push(ALPHABET[(group >> (18 - 6 * index) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// `id` attribute of a stage's section (stage ids are identifiers, but stay safe).
fn stage_anchor(stage: &str) -> String {
    format!("stage-{}", url_segment(stage))
}

fn status_class(status: VerdictStatus) -> &'static str {
    match status {
        VerdictStatus::Pass => "pass",
        VerdictStatus::Warn => "warn",
        VerdictStatus::Fail => "fail",
    }
}

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 24px 48px; color: #1d2329; }
h1 { font-size: 24px; margin: 24px 0 4px; }
h2 { font-size: 19px; margin: 32px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 24px 0 4px; }
h4 { font-size: 14px; margin: 14px 0 4px; color: #57606a; }
code, pre, td.num { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 13px; }
nav a { margin-right: 12px; }
table { border-collapse: collapse; margin: 4px 0 8px; }
th, td { text-align: left; padding: 3px 10px 3px 0; vertical-align: top; border-bottom: 1px solid #eaeef2; }
th { color: #57606a; font-weight: 600; }
td.num { text-align: right; white-space: nowrap; }
.badge { display: inline-block; min-width: 38px; text-align: center; border-radius: 4px; font-weight: 600; font-size: 12px; padding: 0 6px; }
.pass .badge { background: #dafbe1; color: #116329; }
.warn .badge { background: #fff8c5; color: #7d4e00; }
.fail .badge, .error .badge { background: #ffebe9; color: #a40e26; }
tr.fail, tr.error { background: #fff5f5; }
tr.warn { background: #fffdf0; }
tr.changed td { font-weight: 600; }
tr.changed td.mark::before { content: "*"; color: #a40e26; }
.muted { color: #57606a; }
div.metrics { display: flex; flex-wrap: wrap; gap: 0 32px; align-items: flex-start; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; image-rendering: pixelated; }
figcaption { font-size: 12px; color: #57606a; }
details pre { max-height: 400px; overflow: auto; background: #f6f8fa; padding: 8px; }
"#;

/// Counts the images that loaded and records it on `<body>` as
/// `data-images-loaded="N/M"` (a broken image also gets `data-broken`), so a
/// headless browser's DOM dump tells whether the page shows what it should.
const SCRIPT: &str = r#"
addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded++; } else { images[i].setAttribute("data-broken", ""); }
  }
  document.body.setAttribute("data-images-loaded", loaded + "/" + images.length);
});
"#;

/// Renders the page. `load` returns the verified bytes of an artifact (images are
/// inlined, small text artifacts previewed).
pub fn render(page: &Page<'_>, load: &dyn Fn(&ArtifactHash) -> anyhow::Result<Vec<u8>>) -> anyhow::Result<String> {
    let mut html = String::new();
    let targets = page.targets.join(" ");
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; \
         style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n\
         <title>pipe report: {}</title>\n<style>{STYLE}</style>\n<script>{SCRIPT}</script>\n</head>\n<body>\n",
        escape(&targets)
    );
    let _ = writeln!(html, "<h1>pipe report: {}</h1>", escape(&targets));
    let headline = crate::output::headline(page.reports, &|hash| load(hash).ok());
    if let Some(line) = headline {
        let _ = writeln!(html, "<p class=\"headline\"><strong>{}</strong></p>", escape(&line));
    }
    let _ = writeln!(
        html,
        "<p class=\"muted\">pipeline <code>{}</code>, device <code>{}</code>, pipe {}; {} stage{}</p>",
        escape(page.pipeline),
        escape(page.device),
        escape(env!("CARGO_PKG_VERSION")),
        page.reports.len(),
        if page.reports.len() == 1 { "" } else { "s" },
    );
    html.push_str("<nav><a href=\"#scorecard\">scorecard</a><a href=\"#config\">config</a>");
    for report in page.reports {
        let _ =
            write!(html, "<a href=\"#{}\">{}</a>", stage_anchor(report.name.as_str()), escape(report.name.as_str()));
    }
    html.push_str("</nav>\n");
    scorecard_section(&mut html, page);
    config_section(&mut html, page);
    html.push_str("<h2>Stages</h2>\n");
    for report in page.reports {
        stage_section(&mut html, page, report, load)?;
    }
    html.push_str("</body>\n</html>\n");
    Ok(html)
}

fn scorecard_section(html: &mut String, page: &Page<'_>) {
    let scorecard = Scorecard::of(page.reports);
    let _ = writeln!(
        html,
        "<section id=\"scorecard\">\n<h2>Scorecard</h2>\n<p class=\"summary\">{}</p>",
        escape(&scorecard.summary())
    );
    if scorecard.is_empty() {
        html.push_str("<p class=\"muted\">No stage here has recipe checks.</p>\n</section>\n");
        return;
    }
    html.push_str(
        "<table class=\"scorecard\">\n<tr><th>status</th><th>stage</th><th>check</th><th>measured</th>\
         <th>expected</th><th>what it means</th><th>what to try</th></tr>\n",
    );
    for Check { stage, verdict } in &scorecard.checks {
        let class = status_class(verdict.status);
        let _ = writeln!(
            html,
            "<tr class=\"check {class}\" data-stage=\"{}\" data-check=\"{}\" data-status=\"{class}\">\
             <td><span class=\"badge\">{}</span></td><td><a href=\"#{}\">{}</a></td><td><code>{}</code></td>\
             <td class=\"num\" title=\"{}\">{}</td><td class=\"num\" title=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(stage),
            escape(&verdict.check),
            verdict_word(verdict.status),
            stage_anchor(stage),
            escape(stage),
            escape(&verdict.check),
            verdict.value,
            escape(&number(verdict.value)),
            verdict.expected,
            escape(&number(verdict.expected)),
            escape(&verdict.message),
            escape(verdict.hint.as_deref().unwrap_or("")),
        );
    }
    for (stage, error) in &scorecard.errored {
        let _ = writeln!(
            html,
            "<tr class=\"error\" data-stage=\"{0}\"><td><span class=\"badge\">ERROR</span></td>\
             <td><a href=\"#{1}\">{0}</a></td><td colspan=\"5\">{2}</td></tr>",
            escape(stage),
            stage_anchor(stage),
            escape(error)
        );
    }
    html.push_str("</table>\n</section>\n");
}

fn config_section(html: &mut String, page: &Page<'_>) {
    let changed = page
        .schema
        .iter()
        .filter(|spec| page.config.get(spec.name).is_some_and(|value| *value != spec.default))
        .count();
    let _ = writeln!(
        html,
        "<section id=\"config\">\n<h2>Config</h2>\n<p>{} knobs, {changed} not at their default \
         (marked <b>*</b>).</p>\n<table class=\"config\">\n<tr><th></th><th>knob</th><th>value</th>\
         <th>default</th><th>set at</th><th>meaning</th></tr>",
        page.schema.len()
    );
    // `file:line` origins name the file by its name only: the page has no absolute paths.
    let file_prefix = page.config.file.as_ref().map(|file| file.display().to_string());
    for spec in page.schema {
        let value = page.config.get(spec.name).unwrap_or(&spec.default);
        let is_changed = *value != spec.default;
        let origin = match page.config.origins.get(spec.name) {
            Some(origin) => match file_prefix.as_deref().and_then(|prefix| origin.strip_prefix(prefix)) {
                Some(line) => format!("{}{line}", page.pipeline),
                None => origin.clone(),
            },
            None => "default".to_string(),
        };
        let _ = writeln!(
            html,
            "<tr class=\"knob{}\" data-knob=\"{}\"><td class=\"mark\"></td><td><code>{}</code></td>\
             <td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            if is_changed { " changed" } else { "" },
            escape(spec.name),
            escape(spec.name),
            escape(&value.to_toml()),
            escape(&spec.default.to_toml()),
            escape(&origin),
            escape(spec.doc),
        );
    }
    html.push_str("</table>\n</section>\n");
}

fn stage_section(
    html: &mut String,
    page: &Page<'_>,
    report: &StageReport,
    load: &dyn Fn(&ArtifactHash) -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<()> {
    let stage = report.name.as_str();
    let _ = writeln!(
        html,
        "<section class=\"stage\" id=\"{}\" data-stage=\"{}\">\n<h3>{}</h3>",
        stage_anchor(stage),
        escape(stage),
        escape(stage)
    );
    if let Some(doc) = page.stage_docs.get(report.stage.0) {
        let _ = writeln!(html, "<p>{}</p>", escape(doc));
    }
    let key = report.key.map(|key| key.to_hex()).unwrap_or_default();
    let _ = writeln!(html, "<p class=\"muted\">key <code>{}</code></p>", escape(&key));
    if let Some(error) = &report.error {
        let _ = writeln!(html, "<p class=\"error\">{}</p>", escape(error));
    }
    let Some(output) = &report.output else {
        html.push_str("</section>\n");
        return Ok(());
    };
    if !output.metrics.is_empty() {
        // Many metrics (per-class counts) go into up to three side-by-side tables.
        let metrics: Vec<(&String, &f64)> = output.metrics.iter().collect();
        let rows = metrics.len().div_ceil(3).max(METRIC_ROWS_MIN);
        html.push_str("<h4>Metrics</h4>\n<div class=\"metrics\">\n");
        for chunk in metrics.chunks(rows) {
            html.push_str("<table class=\"metrics\">\n<tr><th>metric</th><th>value</th></tr>\n");
            for (name, value) in chunk {
                let _ = writeln!(
                    html,
                    "<tr data-metric=\"{}\"><td><code>{}</code></td><td class=\"num\" title=\"{value}\">{}</td></tr>",
                    escape(name),
                    escape(name),
                    escape(&number(**value))
                );
            }
            html.push_str("</table>\n");
        }
        html.push_str("</div>\n");
    }
    if output.artifacts.is_empty() {
        html.push_str("</section>\n");
        return Ok(());
    }
    html.push_str(
        "<h4>Artifacts</h4>\n<table class=\"artifacts\">\n<tr><th>artifact</th><th>bytes</th><th>blake3</th></tr>\n",
    );
    for (name, artifact) in output.artifacts.iter() {
        let _ = writeln!(
            html,
            "<tr><td><a class=\"artifact\" href=\"{}\">{}</a></td><td class=\"num\">{}</td>\
             <td><code title=\"{}\">{}</code></td></tr>",
            escape(&artifact_href(stage, name)),
            escape(name),
            artifact.bytes,
            artifact.hash.to_hex(),
            artifact.hash.short(),
        );
    }
    html.push_str("</table>\n");
    let mut figures = String::new();
    let mut previews = String::new();
    for (name, artifact) in output.artifacts.iter() {
        let href = escape(&artifact_href(stage, name));
        if let Some(mime) = image_type(name) {
            if artifact.bytes > INLINE_IMAGE_MAX_BYTES {
                let _ = writeln!(
                    figures,
                    "<figure><a href=\"{href}\">{}</a><figcaption>too large to inline ({} bytes)</figcaption></figure>",
                    escape(name),
                    artifact.bytes
                );
                continue;
            }
            let bytes = load(&artifact.hash).with_context(|| format!("reading artifact {stage}/{name}"))?;
            let _ = writeln!(
                figures,
                "<figure><a href=\"{href}\"><img src=\"data:{mime};base64,{}\" alt=\"{}\"></a>\
                 <figcaption>{}</figcaption></figure>",
                base64(&bytes),
                escape(&format!("{stage}/{name}")),
                escape(name),
            );
        } else if is_text(name) && artifact.bytes <= PREVIEW_MAX_BYTES {
            let bytes = load(&artifact.hash).with_context(|| format!("reading artifact {stage}/{name}"))?;
            let _ = writeln!(
                previews,
                "<details><summary><code>{}</code></summary><pre>{}</pre></details>",
                escape(name),
                escape(&String::from_utf8_lossy(&bytes))
            );
        }
    }
    if !figures.is_empty() {
        let _ = write!(html, "<div class=\"figures\">\n{figures}</div>\n");
    }
    html.push_str(&previews);
    html.push_str("</section>\n");
    Ok(())
}

/// Writes the page to `report/index.html` under the cache (temp file, then rename, so
/// a browser never sees half a page) and returns its path.
pub fn write(cache: &cache::Cache, html: &str) -> anyhow::Result<PathBuf> {
    // Atomic and link-safe: the cache writes it (temp file, then rename).
    let relative = page_path(Path::new(""));
    cache.write_file(&relative, html.as_bytes()).with_context(|| format!("writing {}", relative.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache::ArtifactRef;
    use workspace::{KnobKind, KnobValue, StageOutput, StageStatus, Verdict};

    fn schema() -> Vec<KnobSpec> {
        vec![
            KnobSpec::new("data.source", KnobKind::Str, KnobValue::Str("builtin:digits".into()), "where <data> is"),
            KnobSpec::new(
                "train.lr",
                KnobKind::Float { min: 0.0, max: 1.0 },
                KnobValue::Float(workspace::Float(0.1)),
                "lr",
            ),
        ]
    }

    fn reports(png: &[u8]) -> Vec<StageReport> {
        let output = StageOutput::new(
            BTreeMap::from([
                ("plot <1>.png".into(), ArtifactRef { hash: ArtifactHash::of(png), bytes: png.len() as u64 }),
                ("weights.safetensors".into(), ArtifactRef { hash: ArtifactHash::of(b"w"), bytes: 1 }),
            ]),
            BTreeMap::from([("loss<a>&b".into(), 0.5)]),
        );
        vec![StageReport {
            name: workspace::InstanceName("fake".into()),
            stage: workspace::StageId("fake"),
            key: None,
            status: Some(StageStatus::Cached),
            secs: 0.0,
            output: Some(output),
            verdicts: vec![Verdict {
                check: "x<y".into(),
                status: VerdictStatus::Fail,
                value: 3.0,
                expected: 1.0,
                message: "measured <script>alert(1)</script> & more".into(),
                hint: Some("try \"quotes\" & 'apostrophes'".into()),
            }],
            error: None,
            bad_input: false,
            member: false,
        }]
    }

    fn page_html(config: &Config, reports: &[StageReport], png: &[u8]) -> String {
        let schema = schema();
        let targets = vec!["<target>".to_string()];
        let page = Page {
            targets: &targets,
            device: "cpu",
            pipeline: "pipe.toml",
            schema: &schema,
            config,
            stage_docs: BTreeMap::from([("fake", "a stage that <does> things")]),
            reports,
        };
        let bytes = png.to_vec();
        render(&page, &move |_| Ok(bytes.clone())).unwrap()
    }

    #[test]
    fn every_inserted_text_is_escaped() {
        let png = b"\x89PNG fake";
        let mut config = Config::defaults(&schema());
        config.set(&schema(), "data.source=<b>csv:x.csv</b>").unwrap();
        let html = page_html(&config, &reports(png), png);
        for raw in ["loss<a>", "x<y", "<script>alert", "<b>csv", "<does>", "<target>", "<data>", "plot <1>"] {
            assert!(!html.contains(raw), "{raw} is inserted unescaped");
        }
        for escaped in [
            "loss&lt;a&gt;&amp;b",
            "data-check=\"x&lt;y\"",
            "measured &lt;script&gt;alert(1)&lt;/script&gt; &amp; more",
            "try &quot;quotes&quot; &amp; &#39;apostrophes&#39;",
            "&lt;b&gt;csv:x.csv&lt;/b&gt;",
        ] {
            assert!(html.contains(escaped), "{escaped} missing");
        }
        // The only script is ours, and the link to the image is percent-encoded.
        assert_eq!(html.matches("<script").count(), 1);
        assert!(html.contains("href=\"../out/fake/plot%20%3C1%3E.png\""));
    }

    #[test]
    fn marks_changed_knobs_inlines_images_and_is_deterministic() {
        let png = b"\x89PNG fake";
        let mut config = Config::defaults(&schema());
        config.set(&schema(), "train.lr=0.5").unwrap();
        let html = page_html(&config, &reports(png), png);
        assert!(html.contains("<tr class=\"knob changed\" data-knob=\"train.lr\">"));
        assert!(html.contains("<tr class=\"knob\" data-knob=\"data.source\">"));
        assert!(html.contains("<td>--set</td>"));
        assert!(html.contains(&format!("src=\"data:image/png;base64,{}\"", base64(png))));
        assert!(html.contains("href=\"../out/fake/weights.safetensors\""));
        assert_eq!(html, page_html(&config, &reports(png), png));
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(&[0xfb, 0xff, 0xfe]), "+//+");
    }
}
