//! The Docker Engine through its CLI: networks with subnets we choose (so a restarted container gets its
//! address back), labelled containers, and the fault tools (kill, signal, pause, network disconnect, iptables
//! inside a container's network namespace). Everything this harness creates carries the label
//! [`LABEL`]`=<run id>` and [`PID_LABEL`]`=<pid of the test process>`, so leftovers of a crashed run are found
//! and removed at the next start.

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::time::Duration;

pub const LABEL: &str = "berth-cluster";
pub const PID_LABEL: &str = "berth-cluster.pid";

/// Run `docker ARGS`; its stdout (trimmed) on success, else an error with both streams.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).output().map_err(|e| format!("docker {args:?}: {e}"))?;
    result(args, out)
}

fn result(args: &[&str], out: Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {}: {}: {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// [`docker`], panicking with the error: for set-up steps a scenario cannot do without.
pub fn must(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether a Docker Engine answers (`docker info`).
pub fn available() -> Result<(), String> {
    docker(&["info", "--format", "{{.ServerVersion}}"]).map(|_| ())
}

/// Remove the containers and networks of earlier runs whose test process is gone (a run that crashed or was
/// killed before its Drop guard ran). Runs of live processes are left alone.
pub fn remove_leftovers() {
    let alive = |pid: &str| pid.parse::<u32>().is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
    let filter = format!("label={LABEL}");
    let fmt = format!("{{{{.ID}}}} {{{{.Label \"{PID_LABEL}\"}}}}");
    if let Ok(list) = docker(&["ps", "-a", "--filter", &filter, "--format", &fmt]) {
        let dead: Vec<&str> =
            list.lines().filter_map(|l| l.split_once(' ')).filter(|(_, pid)| !alive(pid)).map(|(id, _)| id).collect();
        if !dead.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(dead);
            let _ = docker(&args);
        }
    }
    if let Ok(list) = docker(&["network", "ls", "--filter", &filter, "--format", &fmt]) {
        for (id, pid) in list.lines().filter_map(|l| l.split_once(' ')) {
            if !alive(pid) {
                let _ = docker(&["network", "rm", id]);
            }
        }
    }
}

/// A user-defined bridge network with a /24 of our choosing (`addr(n)` is `.n`), removed on drop.
pub struct Network {
    pub name: String,
    prefix: [u8; 3],
}

impl Network {
    /// Create `name`, labelled for `run`, on the first free 10.x.y.0/24 of a few tried (seeded by `seed`).
    pub fn create(name: &str, run: &str, seed: u32) -> Network {
        let mut last = String::new();
        for i in 0..40u32 {
            let s = seed.wrapping_add(i.wrapping_mul(7919));
            let prefix = [10, 100 + (s % 100) as u8, ((s / 100) % 250) as u8 + 1];
            let subnet = format!("{}.{}.{}.0/24", prefix[0], prefix[1], prefix[2]);
            let gateway = format!("{}.{}.{}.1", prefix[0], prefix[1], prefix[2]);
            let label = format!("{LABEL}={run}");
            let pid = format!("{PID_LABEL}={}", std::process::id());
            match docker(&[
                "network",
                "create",
                "--driver",
                "bridge",
                "--subnet",
                &subnet,
                "--gateway",
                &gateway,
                "--label",
                &label,
                "--label",
                &pid,
                name,
            ]) {
                Ok(_) => return Network { name: name.to_string(), prefix },
                // Another network (ours or the host's) has the subnet: try the next.
                Err(e) => last = e,
            }
        }
        panic!("cannot create network {name}: {last}");
    }

    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], host)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// One container of the cluster, with its addresses on the networks it was attached to.
#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
}

impl Container {
    /// Create and start a container: `image` running `cmd`, attached to `nets` (network name, address; the first
    /// at creation, the others before the start so the process sees every interface), with `binds`
    /// (`host:container`) and `env`.
    pub fn run(
        name: &str,
        run: &str,
        image: &str,
        nets: &[(&str, Ipv4Addr)],
        binds: &[String],
        env: &[(&str, &str)],
        cmd: &[String],
    ) -> Container {
        let label = format!("{LABEL}={run}");
        let pid = format!("{PID_LABEL}={}", std::process::id());
        let (first, ip) = nets[0];
        let ip = ip.to_string();
        let mut args: Vec<String> = [
            "create",
            "--name",
            name,
            "--hostname",
            name,
            "--label",
            &label,
            "--label",
            &pid,
            "--network",
            first,
            "--ip",
            &ip,
            "--init",
            // iptables rules from the host (nsenter) and the agent's process runtime need nothing more.
            "--stop-timeout",
            "10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for b in binds {
            args.push("-v".into());
            args.push(b.clone());
        }
        for (k, v) in env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.push(image.to_string());
        args.extend(cmd.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        must(&refs);
        for (net, ip) in &nets[1..] {
            must(&["network", "connect", "--ip", &ip.to_string(), net, name]);
        }
        must(&["start", name]);
        Container { name: name.to_string() }
    }

    /// SIGKILL (`docker kill`): the process dies at once, no clean-up.
    pub fn kill(&self) {
        let _ = docker(&["kill", &self.name]);
    }

    /// Send `signal` (e.g. `TERM`) to the container's main process (through docker-init).
    pub fn signal(&self, signal: &str) {
        must(&["kill", "-s", signal, &self.name]);
    }

    /// Start a stopped (killed or exited) container again: same addresses, same files.
    pub fn start(&self) {
        must(&["start", &self.name]);
    }

    /// Freeze every process of the container (cgroup freezer): a stalled process that still holds its sockets.
    pub fn pause(&self) {
        must(&["pause", &self.name]);
    }

    pub fn unpause(&self) {
        must(&["unpause", &self.name]);
    }

    pub fn disconnect(&self, net: &str) {
        must(&["network", "disconnect", "--force", net, &self.name]);
    }

    pub fn connect(&self, net: &str, ip: Ipv4Addr) {
        must(&["network", "connect", "--ip", &ip.to_string(), net, &self.name]);
    }

    /// Whether the container's main process runs (and is not paused).
    pub fn running(&self) -> bool {
        docker(&["inspect", "-f", "{{.State.Running}} {{.State.Paused}}", &self.name]).is_ok_and(|s| s == "true false")
    }

    /// Wait until the container has stopped (after a signal), up to `timeout`.
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if docker(&["inspect", "-f", "{{.State.Running}}", &self.name]).is_ok_and(|s| s == "false") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The host PID of the container's init process (for nsenter).
    pub fn pid(&self) -> u32 {
        must(&["inspect", "-f", "{{.State.Pid}}", &self.name]).parse().unwrap_or(0)
    }

    /// Run `iptables ARGS` in the container's network namespace, from the host (the image has no tools).
    pub fn iptables(&self, args: &[&str]) {
        let pid = self.pid().to_string();
        let out = Command::new("nsenter")
            .args(["-t", &pid, "-n", "iptables"])
            .args(args)
            .output()
            .expect("run nsenter (util-linux)");
        assert!(
            out.status.success(),
            "nsenter -t {pid} -n iptables {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// Drop every packet in and out of the container except loopback: cut off from everything, alive.
    pub fn isolate(&self) {
        self.iptables(&["-I", "INPUT", "!", "-i", "lo", "-j", "DROP"]);
        self.iptables(&["-I", "OUTPUT", "!", "-o", "lo", "-j", "DROP"]);
    }

    /// Undo [`Container::isolate`].
    pub fn unisolate(&self) {
        self.iptables(&["-D", "INPUT", "!", "-i", "lo", "-j", "DROP"]);
        self.iptables(&["-D", "OUTPUT", "!", "-o", "lo", "-j", "DROP"]);
    }

    /// The last `lines` lines of the container's output (stdout and stderr), for failure reports.
    pub fn logs(&self, lines: usize) -> String {
        let out = Command::new("docker").args(["logs", "--tail", &lines.to_string(), &self.name]).output();
        match out {
            Ok(o) => format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
            Err(e) => format!("docker logs {}: {e}", self.name),
        }
    }

    /// When the container first printed a line containing `needle` at or after `since` (Docker's receive time
    /// of the line, on the host clock the containers share).
    pub fn first_log_after(&self, needle: &str, since: std::time::SystemTime) -> Option<std::time::SystemTime> {
        let since_arg = humantime::format_rfc3339_nanos(since).to_string();
        let out =
            Command::new("docker").args(["logs", "--timestamps", "--since", &since_arg, &self.name]).output().ok()?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        text.lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| l.split_whitespace().next().and_then(|t| humantime::parse_rfc3339(t).ok()))
            .filter(|t| *t >= since)
            .min()
    }

    pub fn remove(&self) {
        let _ = docker(&["rm", "-f", "-v", &self.name]);
    }
}
