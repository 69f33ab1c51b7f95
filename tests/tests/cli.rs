//! The command line as a new user meets it: help texts and clear messages for what is missing.

use flotilla_e2e::{flotilla, show};

#[test]
fn every_subcommand_has_useful_help() {
    let top = flotilla(&["--help"]);
    assert!(top.status.success(), "{}", show(&top));
    let text = String::from_utf8_lossy(&top.stdout);
    for sub in [
        "server", "agent", "up", "down", "status", "chaos", "bench", "image",
    ] {
        assert!(text.contains(sub), "top-level help lacks {sub}: {text}");
        let out = flotilla(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help: {}", show(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Usage: flotilla"), "{sub} --help: {help}");
    }
    let up = String::from_utf8_lossy(&flotilla(&["up", "--help"]).stdout).into_owned();
    for flag in ["--dir", "--masters", "--nodes", "--no-demo"] {
        assert!(up.contains(flag), "up --help lacks {flag}");
    }
}

#[test]
fn unavailable_subcommands_say_so_and_fail() {
    for args in [
        vec!["agent"],
        vec!["chaos"],
        vec!["image", "build"],
        vec!["bench", "routing"],
    ] {
        let out = flotilla(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not available yet"), "{args:?}: {err}");
    }
    let out = flotilla(&["bench", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("available: kv, api, scheduler; planned: routing"));
}

#[test]
fn bad_flags_and_missing_clusters_get_clear_errors() {
    let out = flotilla(&["up", "--dir", "/tmp/x", "--masters", "0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--masters"),
        "{}",
        show(&out)
    );
    let out = flotilla(&["status", "--dir", "/nonexistent/flotilla-cluster"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no cluster in") && err.contains("flotilla up"),
        "{err}"
    );
}
