//! The README's "Five-minute tour", run as written: this test extracts every command of the tour's fenced
//! `sh` blocks and runs them in order with bash, so the README and Berth cannot drift apart. Each command must
//! exit 0, except one followed by a `# error: TEXT` line, which must fail and print TEXT.
//!
//! What the test changes, and why: `/tmp/berth` becomes a temporary data dir and the fixed API address
//! `127.0.0.1:7070` becomes port 0 (the address the server records in its data dir is used wherever the tour
//! names it), because tests run concurrently; the `cargo build ... && export PATH=...` line is replaced by the
//! test's own build of `berth` on PATH; a command ending in `&` runs in the background and the next command
//! waits until the API answers. The tour runs in a temporary directory holding `config/` (a link to the
//! repository's) and the `broken.yaml` the tour shows, so its relative paths work.

use crate::common::{repo, require_tool, BERTH};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The `sh` blocks of the README section titled `title`, one command per line (comments and blank lines
/// kept, for the `# error:` expectations).
fn tour_lines(readme: &str, title: &str) -> Vec<String> {
    let start = readme.find(&format!("## {title}")).unwrap_or_else(|| panic!("README has no section {title:?}"));
    let rest = &readme[start + 3..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut lines = Vec::new();
    let mut in_sh = false;
    let mut continued = String::new();
    for line in section.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && t == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        // Join `\` continuations into one command.
        if let Some(head) = line.strip_suffix('\\') {
            continued.push_str(head);
            continue;
        }
        continued.push_str(line);
        lines.push(std::mem::take(&mut continued).trim().to_string());
    }
    assert!(!in_sh, "an unterminated ```sh block in {title:?}");
    lines
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The bash script that runs `lines`, reporting every failed expectation as a `TOUR-FAILED` line.
fn script(lines: &[String], data: &Path) -> String {
    let data = data.display().to_string();
    let api = format!("$(cat {data}/api-address)");
    let mut out = String::from("set -u\n");
    let mut commands = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with("cargo build") {
            continue; // the test's own build of berth is on PATH
        }
        let cmd = line
            .replace("/tmp/berth", &data)
            .replace("--api-listen 127.0.0.1:7070", "--api-listen 127.0.0.1:0")
            // Inside single quotes the command substitution needs the quote closed around it.
            .replace("'https://127.0.0.1:7070", &format!("\"{api}\"'"))
            .replace("https://127.0.0.1:7070", &api);
        commands += 1;
        let shown = shell_quote(line);
        if let Some(bg) = cmd.strip_suffix('&') {
            // Its output goes to a file: a background process holding the script's stdout would keep the
            // test waiting for EOF.
            out.push_str(&format!("{bg} >>{data}/background.log 2>&1 &\nBG_PIDS=\"${{BG_PIDS:-}} $!\"\n"));
            out.push_str(&format!(
                "for _ in $(seq 600); do berth get nodes --data-dir {data} >/dev/null 2>&1 && break; sleep 0.1; done\n"
            ));
            continue;
        }
        let expected = lines.get(i + 1).and_then(|n| n.strip_prefix("# error:")).map(|e| format!("error:{e}"));
        match expected {
            Some(text) => out.push_str(&format!(
                "out=$({cmd} 2>&1); rc=$?; echo \"$out\"\n\
                 if [ $rc -eq 0 ] || ! printf '%s' \"$out\" | grep -qF -- {}; then echo \"TOUR-FAILED: \"{shown}\" (exit $rc, expected a failure printing the README's error line)\"; fi\n",
                shell_quote(&text)
            )),
            None => out.push_str(&format!("{cmd}\nrc=$?; if [ $rc -ne 0 ]; then echo \"TOUR-FAILED: \"{shown}\" (exit $rc)\"; fi\n")),
        }
    }
    assert!(commands >= 10, "the tour has its commands ({commands} found)");
    out.push_str("echo; echo \"TOUR-BACKGROUND:${BG_PIDS:-}\"\n");
    out
}

#[test]
fn readme_tour_runs_as_written() {
    if !require_tool("curl", "readme_tour_runs_as_written") {
        return;
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let lines = tour_lines(&readme, "Five-minute tour");
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink(repo().join("config"), work.path().join("config")).unwrap();
    // The broken manifest the tour shows being refused.
    let web = std::fs::read_to_string(repo().join("config/examples/web.yaml")).unwrap();
    let broken = web.split("\n---").next().unwrap().replacen("ports:", "portz:", 1);
    assert_ne!(broken, web, "config/examples/web.yaml declares ports to misspell");
    std::fs::write(work.path().join("broken.yaml"), broken).unwrap();

    let bin_dir = Path::new(BERTH).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("bash")
        .arg("-c")
        .arg(script(&lines, &data))
        .current_dir(work.path())
        .env("PATH", path)
        .env_remove("BERTH_SERVER")
        .env_remove("BERTH_TOKEN")
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));

    // Stop what the tour left running. Its agent leaves pods running on exit (they would be adopted by the
    // next agent), so drain its node and wait until the pods stopped, then stop the agent and the server.
    let client = |args: &[&str]| Command::new(BERTH).args(args).arg("--data-dir").arg(&data).output();
    let _ = client(&["drain", "node-1"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let quiet = client(&["get", "pods", "-A", "-o", "json"]).is_ok_and(|o| {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            v["items"].as_array().is_some_and(|items| items.iter().all(|p| p["status"]["phase"] != "Running"))
        });
        if quiet {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let background = stdout.lines().find_map(|l| l.strip_prefix("TOUR-BACKGROUND:")).unwrap_or("").to_string();
    for pid in background.split_whitespace().rev() {
        let _ = Command::new("kill").args(["-TERM", pid]).status();
    }
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("TOUR-FAILED")).collect();
    assert!(failed.is_empty(), "README tour commands failed:\n{}", failed.join("\n"));
    assert!(!background.trim().is_empty(), "the tour starts a server and an agent in the background");
}
