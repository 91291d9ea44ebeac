//! `vaultgate store migrate`: prints what moved, and what the operator
//! does next.

use std::process::ExitCode;

use super::args::StoreCommand;
use super::fail;
use crate::vault::migrate::{self, Limits, Moved};

pub fn main(cmd: StoreCommand) -> ExitCode {
    let StoreCommand::Migrate {
        config,
        from_state_dir,
        etcd_max_request_bytes,
        etcd_max_txn_ops,
    } = cmd;
    let (settings, store) = match super::cluster::etcd_store(Some(config)) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let etcd = match crate::etcd::Etcd::connect(&store.client_config()) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let limits = Limits {
        request_bytes: etcd_max_request_bytes,
        txn_ops: etcd_max_txn_ops,
    };
    let report = match migrate::migrate(&from_state_dir, &settings.master_key, etcd, limits) {
        Ok(r) => r,
        Err(e) => return fail(format!("{e}; nothing was migrated")),
    };
    println!(
        "moved {} key(s) from {} into the cluster under etcd prefix {} (revision {}, {} bytes):",
        report.keys.len(),
        from_state_dir.display(),
        store.prefix,
        report.revision,
        report.bytes
    );
    let rows: Vec<Vec<String>> = report.keys.iter().map(row).collect();
    print!("{}", super::cluster::table(&rows));
    println!(
        "next: on each vault node, make a new state dir holding a copy of {dir}/master.key and \
         {dir}/keystore.json (nothing else: each node keeps its own audit log), give it this \
         config with its own node name, and start it; {dir} stays as it was, as a fallback",
        dir = from_state_dir.display()
    );
    ExitCode::SUCCESS
}

/// `web  ecdsa-p256  enabled  versions 1,2,3  primary 3  certificates 1,2,3  generation 6  3234 bytes`
fn row(k: &Moved) -> Vec<String> {
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let certs = if k.certificates.is_empty() {
        "no certificate".to_owned()
    } else {
        format!("certificates {}", list(&k.certificates))
    };
    vec![
        k.name.clone(),
        k.key_type.to_owned(),
        k.state.to_owned(),
        format!("versions {}", list(&k.versions)),
        format!("primary {}", k.primary),
        certs,
        format!("generation {}", k.generation),
        format!("{} bytes", k.bytes),
    ]
}
