//! `berth-echo`: the echo workload alone, without the rest of `berth`. Tests run it as a pod's `berth`
//! command, and the Docker echo image can be built from its static build (it is much smaller than `berth`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The process runtime starts its log keepers with its own executable, which this is in tests.
    if args.first().map(String::as_str) == Some(agent::runtime::log_keeper::SUBCOMMAND) {
        std::process::exit(agent::runtime::log_keeper::main(&args[1..]));
    }
    let listen = match agent::echo::parse_args(&args) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("berth echo: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth echo: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(agent::echo::run(&listen)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("berth echo: {e}");
            std::process::exit(1);
        }
    }
}
