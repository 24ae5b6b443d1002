//! `layerspec report`: results of `run --json` rendered as one self-contained HTML page or
//! as Markdown; a failing row shows as a failure in every place a reader looks.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Three rows: a pass and a skip on the model, and a failure on the host kernel, of a
/// scenario citing OVL4 (and USER3).
const ROWS: &str = concat!(
    r#"{"scenario":"rename/lower_dir_exdev","driver":"overlay2","backend":"model","status":"pass","detail":"","kernel":"6.18"}"#,
    "\n",
    r#"{"scenario":"rename/lower_dir_exdev","driver":"overlay","backend":"model","status":"skip","detail":"no reason <at> all","kernel":"6.18"}"#,
    "\n",
    r#"{"scenario":"rename/lower_dir_exdev","driver":"overlay2","backend":"kernel","status":"fail","detail":"step 1 (rename /etc -> /etc2): expected EXDEV, got ok\n  second line","kernel":"6.18.44-test"}"#,
    "\n",
);

fn report(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_layerspec"))
        .arg("report")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_failing_row_is_a_failure_in_the_html_report() {
    let out = report(&["-"], ROWS);
    let html = String::from_utf8(out.stdout).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<span class=\"chip fail\">1 fail</span>"));
    assert!(html.contains("<h2>Failures (1)</h2>"));
    // The failure's detail in full, escaped.
    assert!(html.contains(
        "<pre>step 1 (rename /etc -&gt; /etc2): expected EXDEV, got ok&#10;  second line</pre>"
    ));
    // Its scenario cell is a failure whose hover gives the reason; the skip's gives its own.
    assert!(
        html.contains("<td class=\"fail\" title=\"rename/lower_dir_exdev [overlay2] on kernel (6.18.44-test): fail&#10;step 1"),
        "{html}"
    );
    assert!(html.contains("title=\"rename/lower_dir_exdev [overlay] on model (6.18): skip&#10;no reason &lt;at&gt; all\">–</td>"));
    // The claims it cites fail in that column, and the per-driver totals count it.
    let ovl4 = html.find("<a href=\"#claim-OVL4\">OVL4</a> <span").unwrap();
    let row = &html[ovl4..html[ovl4..].find("</tr>").unwrap() + ovl4];
    assert!(
        row.contains("<td class=\"fail\" title=\"1 fail&#10;fail  rename/lower_dir_exdev: step 1"),
        "{row}"
    );
    assert!(row.contains("<td class=\"pass\""), "{row}");
    assert!(html.contains("<span class=\"n fail\">1 fail</span>"));
    // Kernel columns and the kernel-version rules.
    assert!(html.contains("<th class=\"kernel\" title=\"6.18.44-test\">6.18</th>"));
    assert!(html.contains("<h2>Kernel-version rules</h2>"));
    assert!(html.contains("<a href=\"#claim-LS6\">LS6</a></td><td class=\"range\">&gt;= 6.6</td>"));
    // Self-contained: no script, no stylesheet or image fetched, every link in the page.
    for banned in ["<script", "<link", "<img", "src=", "url(", "@import"] {
        assert!(!html.contains(banned), "the page contains {banned}");
    }
    assert!(html
        .match_indices("href=\"")
        .all(|(i, _)| html[i + 6..].starts_with('#')));
}

#[test]
fn a_failing_row_is_a_failure_in_the_markdown_report() {
    let dir = std::env::temp_dir().join(format!("layerspec-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("r.json");
    std::fs::write(&input, ROWS).unwrap();
    let md_path = dir.join("report.md");
    report(
        &[
            input.to_str().unwrap(),
            "--format",
            "md",
            "--out",
            md_path.to_str().unwrap(),
        ],
        "",
    );
    let md = std::fs::read_to_string(&md_path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(md.contains("**1 pass, 1 fail, 1 skip**"), "{md}");
    assert!(md.contains(
        "### rename/lower_dir_exdev [overlay2] on kernel (6.18.44-test)\n\n```text\nstep 1 (rename /etc -> /etc2): expected EXDEV, got ok\n  second line\n```"
    ));
    let row = md
        .lines()
        .find(|l| l.starts_with("| rename/lower_dir_exdev |"))
        .unwrap();
    // Columns: overlay on model, overlay2 on model, overlay2 on kernel.
    assert_eq!(row, "| rename/lower_dir_exdev | – | ✓ | ✗ |");
    assert!(md.contains("| 1 | no reason <at> all | rename/lower_dir_exdev [overlay] on model |"));
    assert!(md.contains("| LS6 | >= 6.6 |"));
}

#[test]
fn a_line_that_is_not_a_row_is_refused_with_its_place() {
    let out = Command::new(env!("CARGO_BIN_EXE_layerspec"))
        .args(["report", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(b"{\"scenario\":\"a\"}\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-:1: no string `status`"));
}
