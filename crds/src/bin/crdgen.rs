//! Writes the PostgresMcpBinding CustomResourceDefinition as YAML, and its reference page.
//!
//! `crdgen` prints the YAML; `crdgen PATH...` writes each PATH: the reference page
//! (`pgmcp_crds::reference`) when it ends in `.md`, the YAML otherwise; `crdgen --check PATH...`
//! exits non-zero when a file differs from what the Rust types generate (the drift check `make
//! test` runs).

use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = match pgmcp_crds::v1alpha1::crd_yaml() {
        Ok(yaml) => yaml,
        Err(err) => {
            eprintln!("crdgen: failed to render the CRD: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.first().is_some_and(|a| a == "--check");
    if check {
        args.remove(0);
    }
    if args.is_empty() {
        print!("{yaml}");
        return ExitCode::SUCCESS;
    }
    let mut status = ExitCode::SUCCESS;
    let reference = match pgmcp_crds::reference::markdown() {
        Ok(text) => text,
        Err(err) => {
            eprintln!("crdgen: failed to render the reference: {err}");
            return ExitCode::FAILURE;
        }
    };
    for path in &args {
        let yaml = if path.ends_with(".md") {
            &reference
        } else {
            &yaml
        };
        if check {
            match std::fs::read_to_string(path) {
                Ok(current) if current == *yaml => {}
                Ok(_) => {
                    eprintln!("crdgen: {path} is out of date: run `make generate` and commit it");
                    status = ExitCode::FAILURE;
                }
                Err(err) => {
                    eprintln!("crdgen: failed to read {path}: {err}");
                    status = ExitCode::FAILURE;
                }
            }
        } else if let Err(err) = std::fs::write(path, yaml) {
            eprintln!("crdgen: failed to write {path}: {err}");
            status = ExitCode::FAILURE;
        }
    }
    status
}
