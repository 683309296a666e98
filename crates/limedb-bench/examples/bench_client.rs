//! A stand-alone driver for [`limedb_bench::run`] taking the same flags as
//! `limedb bench`, for use before (or without) building the `limedb` binary:
//! `bench/http.sh --client example` uses it.
//!
//! ```text
//! cargo run --release -p limedb-bench --example bench_client -- \
//!     --url http://127.0.0.1:8080 --connections 64 --requests 100000 \
//!     --workload get --keyspace 100000 --value-size 100 [--json]
//! ```
//!
//! Extra flags: `--target limedb|etcd`, `--key-pattern sequential|random`,
//! `--values repeating|random`, `--no-prefill`, `--warmup N`, `--timeout-ms MS`.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use limedb_bench::{run, BenchOptions};

fn parse() -> Result<(BenchOptions, bool), String> {
    let mut options = BenchOptions::default();
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        fn num<T: std::str::FromStr>(flag: &str, text: String) -> Result<T, String> {
            text.parse()
                .map_err(|_| format!("{flag}: {text:?} is not a valid number"))
        }
        match flag.as_str() {
            "--url" => options.url = value()?,
            "--target" => options.api = value()?.parse().map_err(|e| format!("{e}"))?,
            "--connections" | "-c" => options.connections = num(&flag, value()?)?,
            "--requests" | "-n" => options.requests = num(&flag, value()?)?,
            "--workload" => options.workload = value()?.parse().map_err(|e| format!("{e}"))?,
            "--keyspace" => options.keyspace = num(&flag, value()?)?,
            "--value-size" => options.value_size = num(&flag, value()?)?,
            "--values" => options.value_kind = value()?.parse().map_err(|e| format!("{e}"))?,
            "--key-pattern" => {
                options.key_pattern = value()?.parse().map_err(|e| format!("{e}"))?
            }
            "--no-prefill" => options.prefill = false,
            "--warmup" => options.warmup_requests = num(&flag, value()?)?,
            "--timeout-ms" => options.timeout_ms = num(&flag, value()?)?,
            "--json" => json = true,
            "-h" | "--help" => {
                println!(
                    "usage: bench_client --url URL [--target limedb|etcd] [--connections C] [--requests N] \
                     [--workload set|get|mixed] [--keyspace K] [--value-size B] \
                     [--values repeating|random] [--key-pattern sequential|random] [--no-prefill] [--warmup N] \
                     [--timeout-ms MS] [--json]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    options.progress = std::io::stderr().is_terminal();
    Ok((options, json))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (options, json) = match parse() {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("bench_client: {message}");
            return ExitCode::from(2);
        }
    };
    match run(&options).await {
        Ok(report) if json => {
            println!("{}", report.to_json());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", report.to_table());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("bench_client: {error}");
            ExitCode::FAILURE
        }
    }
}
