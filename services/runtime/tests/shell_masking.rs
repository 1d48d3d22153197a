//! The scripts print URLs with `mask_url` from scripts/env.sh (they run
//! before anything is built); it must mask exactly what the services' own
//! `triage_runtime::mask_url` masks.

use std::path::Path;
use std::process::Command;

use triage_runtime::mask_url;

const CASES: [&str; 12] = [
    "nats://u:secret@h:4222",
    "nats://s3cr3t-token@h:4222",
    "nats://a:1@n1:4222,nats://tok@n2:4222,nats://n3:4222",
    "a:1@n1:4222,n2:4222",
    "nats://u:p@ss@h",
    "tls://u:p%40ss@h",
    "postgres://postgres@127.0.0.1:5432/triage",
    "postgres://triage:hunter2@db:5432/triage?sslmode=require",
    "postgres://db/triage?user=t&password=hunter2&sslpassword=k#frag",
    "nats://127.0.0.1:4222",
    "http://h/p?q=1",
    "plain text, not a url",
];

#[test]
fn the_scripts_mask_urls_as_the_services_do() {
    let env_sh = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/env.sh");
    for case in CASES {
        let out = Command::new("bash")
            .arg("-c")
            .arg(r#"source "$1" && mask_url "$2""#)
            .arg("bash")
            .arg(&env_sh)
            .arg(case)
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shell = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            shell,
            mask_url(case),
            "scripts/env.sh and mask_url disagree on {case:?}"
        );
        assert!(
            !shell.contains("secret") && !shell.contains("hunter2"),
            "{shell}"
        );
    }
}
