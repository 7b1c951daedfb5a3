//! The examples' command-line contract, exercised over loopback: sender and receiver as real
//! processes, directly and through the fault-injecting relay; bad arguments; an address in
//! use. Every process is bounded by its own `--timeout-s` and killed if it overstays.
// These tests run real processes on the real clock.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use surely::net::relay::Relay;
use surely::sim::LinkConfig;

/// `target/<profile>/examples/<name>`. `cargo test` builds the examples alongside the tests;
/// when only this test target was built, they are built here, once.
fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = dir.join("examples").join(name);
    if !path.exists() {
        BUILT.call_once(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--examples", "--quiet"])
                .status()
                .expect("run cargo build --examples");
            assert!(status.success(), "cargo build --examples failed");
        });
    }
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// A receiver on an ephemeral loopback port: the process, its address, and a thread that
/// keeps draining its stderr (a closed pipe would kill it on its next log line).
struct Receiver {
    child: Child,
    addr: SocketAddr,
    stderr: std::thread::JoinHandle<String>,
}

fn start_receiver(extra: &[&str]) -> Receiver {
    let mut child = Command::new(example("receiver"))
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn receiver");
    let mut reader = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .expect("receiver prints its address");
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let stderr = std::thread::spawn(move || {
        let mut rest = line;
        let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
        rest
    });
    Receiver {
        child,
        addr,
        stderr,
    }
}

/// Waits for a child with a hard limit, killing it past the limit.
fn finish(mut child: Child, limit: Duration) -> Output {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("process did not exit within {limit:?}");
}

/// The last line of stdout, parsed as a flat JSON object of numbers, strings and booleans.
fn json(out: &Output, ctx: &str) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default().trim();
    assert!(
        last.starts_with('{') && last.ends_with('}'),
        "not JSON: {last:?}\n{ctx}"
    );
    last[1..last.len() - 1]
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once(':').expect("key:value");
            (
                k.trim_matches('"').to_string(),
                v.trim_matches('"').to_string(),
            )
        })
        .collect()
}

fn field(j: &[(String, String)], k: &str) -> String {
    j.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no field {k} in {j:?}"))
}

fn num(j: &[(String, String)], k: &str) -> f64 {
    field(j, k).parse().expect("number")
}

fn run_pair(guarantee: &str, count: u64, size: usize, through: Option<LinkConfig>) {
    let receiver = start_receiver(&[
        "--guarantee",
        guarantee,
        "--count",
        &count.to_string(),
        "--timeout-s",
        "5",
    ]);
    let addr = receiver.addr;
    let relay = through.map(|link| Relay::spawn("127.0.0.1:0".parse().unwrap(), addr, link, 5));
    let to = relay
        .as_ref()
        .map_or(addr, |r| r.as_ref().expect("relay").local_addr());
    let sender = Command::new(example("sender"))
        .args(["--to", &to.to_string(), "--guarantee", guarantee])
        .args(["--count", &count.to_string(), "--size", &size.to_string()])
        .args(["--timeout-s", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sender");
    let s = finish(sender, Duration::from_secs(40));
    let r = finish(receiver.child, Duration::from_secs(40));
    let r_err = receiver.stderr.join().unwrap_or_default();
    let ctx = format!(
        "{guarantee}: sender {} {}\nreceiver {} {r_err}",
        String::from_utf8_lossy(&s.stdout),
        String::from_utf8_lossy(&s.stderr),
        String::from_utf8_lossy(&r.stdout),
    );
    let (sj, rj) = (json(&s, &ctx), json(&r, &ctx));
    assert_eq!(num(&rj, "corrupt"), 0.0, "{ctx}");
    assert_eq!(num(&sj, "sent"), count as f64, "{ctx}");
    assert_eq!(
        num(&sj, "delivered") + num(&sj, "undeliverable"),
        count as f64,
        "every message has one outcome: {ctx}"
    );
    match guarantee {
        "exactly-once" => {
            assert_eq!(num(&rj, "delivered"), count as f64, "{ctx}");
            assert_eq!(num(&rj, "duplicates"), 0.0, "{ctx}");
            assert_eq!(num(&sj, "delivered"), count as f64, "{ctx}");
        }
        "at-least-once" => {
            assert_eq!(num(&rj, "delivered"), count as f64, "{ctx}");
            assert_eq!(num(&sj, "delivered"), count as f64, "{ctx}");
        }
        _ => {
            assert_eq!(num(&rj, "duplicates"), 0.0, "{ctx}");
            assert!(
                num(&sj, "delivered") <= num(&rj, "delivered"),
                "Delivered only what arrived: {ctx}"
            );
        }
    }
    assert!(s.status.success(), "sender failed: {ctx}");
    assert!(r.status.success(), "receiver failed: {ctx}");
    for key in [
        "elapsed_s",
        "msgs_per_s",
        "p50_us",
        "p99_us",
        "retransmissions",
    ] {
        num(&sj, key);
    }
    for key in ["out_of_order", "gaps_reported", "elapsed_s"] {
        num(&rj, key);
    }
}

#[test]
fn exactly_once_over_loopback() {
    run_pair("exactly-once", 5_000, 64, None);
}

#[test]
fn every_guarantee_through_a_lossy_relay() {
    let link = LinkConfig::perfect(Duration::from_millis(1))
        .loss(0.05)
        .duplicate(0.05)
        .reorder(0.05, Duration::from_millis(3));
    for g in ["exactly-once", "at-least-once", "at-most-once"] {
        run_pair(g, 2_000, 100, Some(link.clone()));
    }
}

#[test]
fn fragmented_messages_through_a_lossy_relay() {
    let link = LinkConfig::perfect(Duration::from_millis(1)).loss(0.03);
    run_pair("exactly-once", 200, 20_000, Some(link));
}

#[test]
fn bad_arguments_get_a_one_line_error_and_status_2() {
    for (prog, args) in [
        ("receiver", vec!["--bogus"]),
        ("receiver", vec!["--listen", "not-an-address"]),
        (
            "receiver",
            vec!["--listen", "127.0.0.1:0", "--ack", "sometimes"],
        ),
        (
            "sender",
            vec!["--to", "127.0.0.1:9", "--guarantee", "twice"],
        ),
        ("sender", vec!["--to", "127.0.0.1:9", "--size", "3"]),
        ("sender", vec![]),
        ("inmem", vec!["--guarantee", "at-most-once", "--ordered"]),
        ("inmem", vec!["--messages", "many"]),
        ("inmem", vec!["--loss", "1"]),
        ("inmem", vec!["--loss", "-0.1"]),
    ] {
        let out = Command::new(example(prog))
            .args(&args)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{prog} {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{prog} {args:?}: {err}");
        assert!(err.starts_with(prog), "{err}");
    }
}

/// Runs `inmem` with `args` (and `--ordered` if asked), which must succeed; returns its JSON
/// fields and a context for assertion messages.
fn inmem(args: &[&str], ordered: bool) -> (Vec<(String, String)>, String) {
    let mut cmd = Command::new(example("inmem"));
    cmd.args(args);
    if ordered {
        cmd.arg("--ordered");
    }
    let out = cmd.output().expect("run inmem");
    let ctx = format!("{args:?} ordered {ordered}: {out:?}");
    assert!(out.status.success(), "{ctx}");
    (json(&out, &ctx), ctx)
}

#[test]
fn inmem_runs_every_guarantee_unordered_and_ordered() {
    for (guarantee, ordered) in [
        ("exactly-once", false),
        ("exactly-once", true),
        ("at-least-once", true),
        ("at-most-once", false),
    ] {
        let (j, ctx) = inmem(&["--messages", "3000", "--guarantee", guarantee], ordered);
        assert_eq!(num(&j, "messages"), 3000.0, "{ctx}");
        assert_eq!(num(&j, "size"), 64.0, "{ctx}");
        assert_eq!(field(&j, "guarantee"), guarantee, "{ctx}");
        assert_eq!(field(&j, "ordered"), ordered.to_string(), "{ctx}");
        // Nothing is lost in memory: every message Delivered (not merely given an outcome)
        // and handed over once, in send order (as the receiving side saw it).
        assert_eq!(num(&j, "delivered"), 3000.0, "{ctx}");
        assert_eq!(num(&j, "received"), 3000.0, "{ctx}");
        assert_eq!(field(&j, "in_order"), "true", "{ctx}");
        for key in ["elapsed_s", "msgs_per_s", "datagrams"] {
            num(&j, key);
        }
    }
}

#[test]
fn inmem_with_loss_still_delivers_every_reliable_message() {
    for (guarantee, ordered) in [
        ("exactly-once", false),
        ("exactly-once", true),
        ("at-least-once", false),
        ("at-most-once", false),
    ] {
        let args = [
            "--messages",
            "3000",
            "--guarantee",
            guarantee,
            "--loss",
            "0.1",
        ];
        let (j, ctx) = inmem(&args, ordered);
        assert_eq!(num(&j, "loss"), 0.1, "{ctx}");
        assert!(num(&j, "dropped") > 0.0, "{ctx}");
        if guarantee == "at-most-once" {
            // Some are lost (never retransmitted); none is confirmed that did not arrive.
            assert!(num(&j, "received") < 3000.0, "{ctx}");
            assert!(num(&j, "delivered") <= num(&j, "received"), "{ctx}");
        } else {
            assert_eq!(num(&j, "delivered"), 3000.0, "{ctx}");
            assert_eq!(num(&j, "received"), 3000.0, "{ctx}");
        }
        if ordered {
            assert_eq!(field(&j, "in_order"), "true", "{ctx}");
        }
    }
}

/// At very high loss the run still ends with every message given an outcome, and prints its
/// line (the connection must not go idle in the virtual time the losses cost).
#[test]
fn inmem_at_very_high_loss_ends_with_its_json_line() {
    for guarantee in ["exactly-once", "at-most-once"] {
        let args = [
            "--messages",
            "300",
            "--guarantee",
            guarantee,
            "--loss",
            "0.9",
        ];
        let (j, ctx) = inmem(&args, false);
        // Delivered only for what the receiver got, and something got through.
        let (delivered, received) = (num(&j, "delivered"), num(&j, "received"));
        assert!(delivered <= received && received <= 300.0, "{ctx}");
        assert!(received > 0.0, "{ctx}");
        assert!(num(&j, "dropped") > num(&j, "datagrams") / 2.0, "{ctx}");
    }
}

#[test]
fn address_in_use_is_a_clear_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(example("receiver"))
        .args(["--listen", &addr, "--timeout-s", "1"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen"), "{err}");
}

/// `pingpong`: both ends in one process over loopback, one datagram each way per ping (a
/// few more for acknowledgements sent alone), and exactly one for raw UDP.
#[test]
fn pingpong_sends_about_one_datagram_each_way_per_ping() {
    for raw in [false, true] {
        let mut cmd = Command::new(example("pingpong"));
        cmd.args(["--pings", "300"]);
        if raw {
            cmd.arg("--raw");
        }
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run pingpong");
        let out = finish(child, Duration::from_secs(60));
        assert!(out.status.success(), "raw {raw}: {out:?}");
        let j = json(&out, &format!("raw {raw}"));
        assert_eq!(field(&j, "pings"), "300");
        assert_eq!(field(&j, "raw"), raw.to_string());
        let (out_, in_) = (num(&j, "datagrams_out"), num(&j, "datagrams_in"));
        let (sends, recvs) = (num(&j, "send_calls"), num(&j, "recv_calls"));
        assert_eq!(out_, in_, "raw {raw}: every datagram arrived");
        assert!(sends <= out_ && sends >= 600.0, "raw {raw}: {j:?}");
        assert!(recvs >= 600.0, "raw {raw}: {j:?}");
        if raw {
            assert_eq!(out_, 600.0);
        } else {
            assert!((600.0..=660.0).contains(&out_), "{j:?}");
        }
        assert!(num(&j, "rtt_p50_us") > 0.0, "{j:?}");
    }
}
