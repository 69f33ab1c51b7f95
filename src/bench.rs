//! `flotilla bench <suite>`: benchmarks that run Flotilla and a baseline in one run on the same
//! machine and report ratios (absolute numbers on shared machines are noisy; ratios are what
//! count).
//!
//! Every suite produces a [`Report`]; it prints as a table, or with `--json` as one JSON document
//! holding every figure and ratio so runs can be compared.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

mod api;
mod common;
mod kv;
mod scheduler;

/// Flags of `flotilla bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The suite to run: `kv` (the replicated store against a 3-member etcd 3.4, same client,
    /// same workload), `api` (the Kubernetes API server on 3 masters against the API server
    /// issue's bars) or `scheduler` (scheduling throughput and leader failover against the
    /// controllers issue's bars). Planned: `routing` (eBPF Service routing against iptables).
    pub suite: String,

    /// Print one JSON document with every figure and ratio instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Seconds per measurement (each side, each level).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,

    /// Concurrent clients for the write measurements, comma-separated (kv).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 256])]
    pub clients: Vec<usize>,

    /// Concurrent clients for the linearizable-read measurement (kv).
    #[arg(long, default_value_t = 16)]
    pub read_clients: usize,

    /// Bytes per value written (kv).
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,

    /// Concurrent creating clients (api, scheduler).
    #[arg(long, default_value_t = 64)]
    pub api_clients: usize,

    /// Target pod creates per second of the fixed-rate measurement (api).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,

    /// Pods that exist for the LIST measurement (api), or are scheduled (scheduler).
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,

    /// Concurrent watchers (api).
    #[arg(long, default_value_t = 1_000)]
    pub watchers: usize,

    /// Changes made while the watchers watch (api).
    #[arg(long, default_value_t = 1_000)]
    pub burst: usize,

    /// Concurrent clients making those changes (api).
    #[arg(long, default_value_t = 64)]
    pub burst_clients: usize,

    /// Node objects the pods are scheduled onto (scheduler).
    #[arg(long, default_value_t = 5_000)]
    pub nodes: usize,
}

/// Suites that run today.
const AVAILABLE: &[&str] = &["kv", "api", "scheduler"];

/// Suites that will exist, with the issue that brings each.
const PLANNED: &[(&str, &str)] = &[("routing", "eBPF routing (Service routing against iptables)")];

/// Runs `suite`; `None` while no suite of that name exists. Suites register here as their
/// issues land.
fn run_suite(args: &BenchArgs) -> Option<anyhow::Result<Report>> {
    match args.suite.as_str() {
        "kv" => Some(kv::run(&kv::KvWorkload {
            seconds: args.seconds,
            clients: args.clients.clone(),
            read_clients: args.read_clients,
            value_size: args.value_size,
        })),
        "api" => Some(api::run(&api::ApiWorkload {
            seconds: args.seconds,
            clients: args.api_clients,
            rate: args.rate,
            pods: args.pods,
            watchers: args.watchers,
            burst: args.burst,
            burst_clients: args.burst_clients,
        })),
        "scheduler" => Some(scheduler::run(&scheduler::SchedulerWorkload {
            nodes: args.nodes,
            pods: args.pods,
            clients: args.api_clients,
        })),
        _ => None,
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match run_suite(&args) {
        Some(r) => {
            let r = r?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", r.table());
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let planned = PLANNED.iter().find(|(name, _)| *name == args.suite);
            match planned {
                Some((name, issue)) => eprintln!(
                    "flotilla bench {name}: not available yet; it arrives with the {issue} issue."
                ),
                None => eprintln!(
                    "flotilla bench: unknown suite {:?}; available: {}; planned: {}",
                    args.suite,
                    AVAILABLE.join(", "),
                    PLANNED
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
            Ok(ExitCode::from(2))
        }
    }
}

/// Which direction is better for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Throughput-like: more is better.
    Higher,
    /// Latency-like: less is better.
    Lower,
}

/// One measured quantity, on both sides.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// What was measured, e.g. `puts/s @16 clients`.
    pub metric: String,
    /// Its unit, e.g. `ops/s` or `ms`.
    pub unit: String,
    /// Flotilla's value.
    pub flotilla: f64,
    /// The baseline's value.
    pub baseline: f64,
    /// Which direction is better.
    pub better: Better,
    /// `flotilla / baseline`.
    pub ratio: f64,
}

impl Figure {
    /// A figure with its ratio computed.
    pub fn new(metric: &str, unit: &str, flotilla: f64, baseline: f64, better: Better) -> Figure {
        Figure {
            metric: metric.into(),
            unit: unit.into(),
            flotilla,
            baseline,
            better,
            ratio: if baseline == 0.0 {
                f64::NAN
            } else {
                flotilla / baseline
            },
        }
    }
}

/// The result of one suite.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The suite's name.
    pub suite: String,
    /// What the baseline is, e.g. `etcd 3.4.23`.
    pub baseline: String,
    /// Every figure.
    pub figures: Vec<Figure>,
}

impl Report {
    /// The report as an aligned text table.
    pub fn table(&self) -> String {
        let width = self
            .figures
            .iter()
            .map(|f| f.metric.len() + f.unit.len() + 3)
            .max()
            .unwrap_or(6)
            .max(6);
        let mut out = format!(
            "suite {}: Flotilla vs {}\n{:<width$} {:>12} {:>12} {:>8}\n",
            self.suite, self.baseline, "METRIC", "FLOTILLA", "BASELINE", "RATIO"
        );
        for f in &self.figures {
            let label = format!("{} ({})", f.metric, f.unit);
            let note = match f.better {
                Better::Higher => "higher is better",
                Better::Lower => "lower is better",
            };
            out.push_str(&format!(
                "{label:<width$} {:>12.1} {:>12.1} {:>7.2}x  {note}\n",
                f.flotilla, f.baseline, f.ratio
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_print_ratios_as_table_and_json() {
        let r = Report {
            suite: "kv".into(),
            baseline: "etcd 3.4".into(),
            figures: vec![
                Figure::new("puts/s @1", "ops/s", 500.0, 250.0, Better::Higher),
                Figure::new("p99 @1", "ms", 2.0, 4.0, Better::Lower),
            ],
        };
        let t = r.table();
        assert!(t.contains("2.00x  higher is better"), "{t}");
        assert!(t.contains("0.50x  lower is better"), "{t}");
        let j: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(j["figures"][0]["ratio"], 2.0);
        assert_eq!(j["figures"][1]["better"], "lower");
    }
}
