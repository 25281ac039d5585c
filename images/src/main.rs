//! `pgmcp-image`: builds one of pgmcp's container images without a container engine, from a
//! final stage of the Dockerfile (`dockerfile.rs` reads it, `oci.rs` writes the archive).
//! `make images` runs it for the operator and the server; images/README.md is the user's guide.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use pgmcp_images::{dockerfile, oci};

/// Build an image archive from a Dockerfile stage FROM scratch.
#[derive(Debug, Parser)]
#[command(name = "pgmcp-image")]
struct Args {
    /// The Dockerfile.
    #[arg(long, default_value = "Dockerfile")]
    dockerfile: PathBuf,
    /// The build context: where COPY without --from reads.
    #[arg(long, default_value = ".")]
    context: PathBuf,
    /// The stage to build (`FROM scratch AS <target>`).
    #[arg(long)]
    target: String,
    /// `STAGE:/PATH=DIR`: what `COPY --from=STAGE /PATH/...` reads from DIR on this machine.
    #[arg(long = "stage-path", value_name = "STAGE:/PATH=DIR")]
    stage_paths: Vec<String>,
    /// `NAME=VALUE` for an `ARG` of the Dockerfile.
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    build_args: Vec<String>,
    /// Image reference recorded in the archive (`registry/repository:tag`).
    #[arg(long)]
    tag: String,
    /// Architecture recorded in the image config (that of the binaries copied in).
    #[arg(long, default_value = "amd64")]
    arch: String,
    /// The archive to write.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.dockerfile)
        .with_context(|| format!("failed to read {}", args.dockerfile.display()))?;
    let build_args = args
        .build_args
        .iter()
        .map(|arg| {
            arg.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--build-arg {arg:?}: expected NAME=VALUE"))
        })
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let stage_paths = args
        .stage_paths
        .iter()
        .map(|arg| parse_stage_path(arg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plan = dockerfile::plan(&text, &args.target, &build_args)
        .with_context(|| format!("{}", args.dockerfile.display()))?;
    let sources = oci::Sources {
        context: args.context,
        stage_paths,
    };
    let image = oci::build(&plan, &sources, &args.arch)?;
    let size = image.write(&args.tag, &args.out)?;
    println!(
        "{}: {} {} ({} files, {:.1} MiB)",
        args.out.display(),
        args.tag,
        image.manifest_digest,
        image.files.len(),
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

fn parse_stage_path(arg: &str) -> anyhow::Result<(String, String, PathBuf)> {
    let parsed = arg.split_once(':').and_then(|(stage, rest)| {
        let (path, dir) = rest.split_once('=')?;
        path.starts_with('/')
            .then(|| (stage.to_owned(), path.to_owned(), PathBuf::from(dir)))
    });
    parsed.with_context(|| format!("--stage-path {arg:?}: expected STAGE:/PATH=DIR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repository's Dockerfile, built as `make images` builds it with stand-in binaries:
    /// every instruction of both final stages is understood, and the images hold exactly the
    /// binary, the CA certificates and passwd/group, run as 65532 with the binary as entrypoint.
    #[test]
    fn the_repository_dockerfile_builds_as_make_images_builds_it() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
        let bins = tempfile::tempdir().unwrap();
        let certs = tempfile::tempdir().unwrap();
        std::fs::write(certs.path().join("ca-certificates.crt"), "certificates").unwrap();
        for (target, port) in [("operator", "8081/tcp"), ("server", "8080/tcp")] {
            let binary = format!("pgmcp-{target}");
            std::fs::write(bins.path().join(&binary), "binary").unwrap();
            let args = BTreeMap::from([("VERSION".to_owned(), "1.2.3".to_owned())]);
            let plan = dockerfile::plan(&text, target, &args).unwrap();
            let sources = oci::Sources {
                context: root.clone(),
                stage_paths: vec![
                    ("build".into(), "/out".into(), bins.path().into()),
                    ("build".into(), "/etc/ssl/certs".into(), certs.path().into()),
                ],
            };
            let image = oci::build(&plan, &sources, "amd64").unwrap();
            assert_eq!(
                image.files,
                [
                    "etc/ssl/certs/ca-certificates.crt".to_owned(),
                    "etc/passwd".to_owned(),
                    "etc/group".to_owned(),
                    format!("usr/local/bin/{binary}"),
                ]
            );
            let config = &image.config["config"];
            assert_eq!(config["User"], "65532:65532");
            assert_eq!(
                config["Entrypoint"],
                serde_json::json!([format!("/usr/local/bin/{binary}")])
            );
            assert!(config["ExposedPorts"].get(port).is_some(), "{config}");
            assert_eq!(
                config["Labels"]["org.opencontainers.image.version"],
                "1.2.3"
            );
            assert_eq!(config["Labels"]["org.opencontainers.image.title"], binary);
        }
        let passwd = std::fs::read_to_string(root.join("images/rootfs/etc/passwd")).unwrap();
        assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    }

    /// The archive is an OCI layout and a `docker save` archive at once, and reproducible.
    #[test]
    fn archive_is_an_oci_layout_and_a_docker_archive() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bin"), "binary").unwrap();
        let text = "FROM scratch AS x\nCOPY bin /bin/x\nUSER 1:1\nENTRYPOINT [\"/bin/x\"]\n";
        let plan = dockerfile::plan(text, "x", &BTreeMap::new()).unwrap();
        let sources = oci::Sources {
            context: dir.path().into(),
            stage_paths: Vec::new(),
        };
        let first = dir.path().join("first.tar");
        let second = dir.path().join("second.tar");
        oci::build(&plan, &sources, "amd64")
            .unwrap()
            .write("example.org/x:1", &first)
            .unwrap();
        oci::build(&plan, &sources, "amd64")
            .unwrap()
            .write("example.org/x:1", &second)
            .unwrap();
        assert_eq!(
            std::fs::read(&first).unwrap(),
            std::fs::read(&second).unwrap()
        );

        let mut names = Vec::new();
        let mut index = String::new();
        let mut manifest = String::new();
        let mut archive = tar::Archive::new(std::fs::File::open(&first).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            match name.as_str() {
                "index.json" => std::io::Read::read_to_string(&mut entry, &mut index).unwrap(),
                "manifest.json" => {
                    std::io::Read::read_to_string(&mut entry, &mut manifest).unwrap()
                }
                _ => 0,
            };
            names.push(name);
        }
        assert!(names.contains(&"oci-layout".to_owned()), "{names:?}");
        let index: serde_json::Value = serde_json::from_str(&index).unwrap();
        let annotations = &index["manifests"][0]["annotations"];
        assert_eq!(annotations["io.containerd.image.name"], "example.org/x:1");
        assert_eq!(annotations["org.opencontainers.image.ref.name"], "1");
        let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], "example.org/x:1");
        for layer in manifest[0]["Layers"].as_array().unwrap() {
            assert!(
                names.contains(&layer.as_str().unwrap().to_owned()),
                "{layer}"
            );
        }
        let err = parse_stage_path("build:out=dir").unwrap_err();
        assert!(
            err.to_string().contains("expected STAGE:/PATH=DIR"),
            "{err}"
        );
    }
}
