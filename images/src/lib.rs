//! pgmcp's container images without a container engine: `dockerfile` reads a final stage of the
//! Dockerfile (FROM scratch) into an [`dockerfile::ImagePlan`], `oci` writes it as an archive
//! that `ctr`, `skopeo`, `crane` and `docker load` read. The `pgmcp-image` command
//! (`make images`) and the test node's harness (its pause image) use both.

pub mod dockerfile;
pub mod oci;
