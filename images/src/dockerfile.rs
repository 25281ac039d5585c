//! The part of the Dockerfile language that pgmcp's final stages use, read into an [`ImagePlan`].
//!
//! A final stage must start `FROM scratch` and may hold only the instructions whose effect on
//! the image is fully known without running anything: `COPY`, `USER`, `EXPOSE`, `ENTRYPOINT`,
//! `CMD`, `LABEL`, `ENV`, `WORKDIR` and `ARG`. Anything else (`RUN`, `ADD`, a base image) is an
//! error naming the line, so a change to the Dockerfile that `make images` cannot reproduce
//! fails the build instead of producing a different image.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};

/// What the final stage's instructions say the image is.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImagePlan {
    pub copies: Vec<Copy>,
    pub user: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
}

/// One `COPY [--from=<stage>] <source>... <destination>`.
#[derive(Debug, PartialEq, Eq)]
pub struct Copy {
    /// `None`: the build context (the repository).
    pub from: Option<String>,
    pub sources: Vec<String>,
    pub destination: String,
    /// The Dockerfile line, for error messages.
    pub line: usize,
}

/// One instruction: its keyword (upper case), its text after continuations are joined, and the
/// line it starts on.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    rest: String,
    line: usize,
}

/// Reads stage `target` of `dockerfile`, with `build_args` overriding `ARG` defaults.
pub fn plan(
    dockerfile: &str,
    target: &str,
    build_args: &BTreeMap<String, String>,
) -> anyhow::Result<ImagePlan> {
    let instructions = instructions(dockerfile);
    let mut global_args = BTreeMap::new();
    let mut stage: Option<(String, usize)> = None;
    let mut body = Vec::new();
    for instruction in &instructions {
        match (instruction.keyword.as_str(), &stage) {
            ("FROM", _) => {
                if stage.as_ref().is_some_and(|(name, _)| name == target) {
                    break;
                }
                let words = words(&instruction.rest);
                let name = match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.clone(),
                    _ => String::new(),
                };
                stage = Some((name, instruction.line));
                body.clear();
            }
            ("ARG", None) => {
                let (name, default) = arg(&instruction.rest);
                let value = build_args.get(&name).cloned().or(default);
                global_args.insert(name, value.unwrap_or_default());
            }
            (_, Some(_)) => body.push(instruction),
            (keyword, None) => bail!(
                "Dockerfile line {}: {keyword} before the first FROM",
                instruction.line
            ),
        }
    }
    let Some((name, from_line)) = stage.filter(|(name, _)| name == target) else {
        bail!("the Dockerfile has no stage named {target:?} (FROM ... AS {target})");
    };
    let from = instructions
        .iter()
        .find(|i| i.line == from_line)
        .map(|i| words(&i.rest).first().cloned().unwrap_or_default())
        .unwrap_or_default();
    let from = expand(&from, &global_args);
    if from != "scratch" {
        bail!(
            "Dockerfile line {from_line}: stage {name} starts FROM {from}; `make images` builds \
             only stages FROM scratch, whose every file the Dockerfile names"
        );
    }

    let mut args = BTreeMap::new();
    let mut plan = ImagePlan::default();
    for instruction in body {
        let line = instruction.line;
        let text = |args: &BTreeMap<String, String>| expand(&instruction.rest, args);
        match instruction.keyword.as_str() {
            "ARG" => {
                let (name, default) = arg(&instruction.rest);
                let value = build_args
                    .get(&name)
                    .cloned()
                    .or(default)
                    .or_else(|| global_args.get(&name).cloned());
                args.insert(name, value.unwrap_or_default());
            }
            "COPY" => plan.copies.push(copy(&text(&args), line)?),
            "USER" => plan.user = Some(text(&args).trim().to_owned()),
            "EXPOSE" => {
                for port in words(&text(&args)) {
                    let port = if port.contains('/') {
                        port
                    } else {
                        format!("{port}/tcp")
                    };
                    plan.exposed_ports.push(port);
                }
            }
            "ENTRYPOINT" => plan.entrypoint = Some(exec_form(&text(&args), line)?),
            "CMD" => plan.cmd = Some(exec_form(&text(&args), line)?),
            "LABEL" => plan.labels.extend(pairs(&text(&args), line)?),
            "ENV" => plan.env.extend(pairs(&text(&args), line)?),
            "WORKDIR" => plan.working_dir = Some(text(&args).trim().to_owned()),
            other => bail!(
                "Dockerfile line {line}: {other} in stage {name}; `make images` cannot reproduce \
                 it without a container engine (allowed: COPY, USER, EXPOSE, ENTRYPOINT, CMD, \
                 LABEL, ENV, WORKDIR, ARG)"
            ),
        }
    }
    Ok(plan)
}

/// The instructions of a Dockerfile: comments and blank lines dropped, `\` continuations joined
/// (comment lines inside a continuation are skipped, as Docker does).
fn instructions(dockerfile: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in dockerfile.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_none()) {
            continue;
        }
        let (continues, content) = match line.strip_suffix('\\') {
            Some(content) => (true, content),
            None => (false, line),
        };
        let (start, text) = current.get_or_insert_with(|| (i + 1, String::new()));
        text.push_str(content);
        text.push(' ');
        let start = *start;
        if !continues {
            let text = current.take().map(|(_, t)| t).unwrap_or_default();
            let text = text.trim();
            let (keyword, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
            out.push(Instruction {
                keyword: keyword.to_ascii_uppercase(),
                rest: rest.trim().to_owned(),
                line: start,
            });
        }
    }
    out
}

/// `NAME[=default]`.
fn arg(rest: &str) -> (String, Option<String>) {
    match rest.trim().split_once('=') {
        Some((name, default)) => (name.to_owned(), Some(unquote(default))),
        None => (rest.trim().to_owned(), None),
    }
}

/// `$NAME` and `${NAME}` replaced by the argument's value (empty when unset).
fn expand(text: &str, args: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
            match braced.split_once('}') {
                Some((name, after)) => (name, after),
                None => ("", rest),
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        if name.is_empty() {
            out.push('$');
        } else {
            out.push_str(args.get(name).map(String::as_str).unwrap_or_default());
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Whitespace-separated words, double quotes grouping (and removed).
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => word.extend(chars.next()),
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

fn unquote(text: &str) -> String {
    words(text).concat()
}

/// `key=value ...` (LABEL, ENV).
fn pairs(text: &str, line: usize) -> anyhow::Result<Vec<(String, String)>> {
    words(text)
        .into_iter()
        .map(|word| {
            word.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| {
                    format!("Dockerfile line {line}: expected key=value, got {word:?}")
                })
        })
        .collect()
}

/// `["a", "b"]`: the JSON (exec) form; the shell form needs a shell the image does not have.
fn exec_form(text: &str, line: usize) -> anyhow::Result<Vec<String>> {
    serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "Dockerfile line {line}: expected the exec form [\"...\"] (the image has no shell), \
             got {text:?}"
        )
    })
}

fn copy(text: &str, line: usize) -> anyhow::Result<Copy> {
    let mut from = None;
    let mut paths = Vec::new();
    for word in words(text) {
        match word.strip_prefix("--") {
            Some(flag) => match flag.split_once('=') {
                Some(("from", stage)) => from = Some(stage.to_owned()),
                _ => bail!(
                    "Dockerfile line {line}: COPY --{flag} is not supported by `make images` \
                     (files are owned by root with their source's mode)"
                ),
            },
            None => paths.push(word),
        }
    }
    let Some(destination) = paths.pop().filter(|_| !paths.is_empty()) else {
        bail!("Dockerfile line {line}: COPY needs a source and a destination");
    };
    Ok(Copy {
        from,
        sources: paths,
        destination,
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
ARG RUNTIME=scratch
FROM rust AS build
RUN cargo build
FROM ${RUNTIME} AS server
ARG VERSION=dev
LABEL a="one two" \
# a comment inside the continuation
      b="${VERSION}"
COPY --from=build /out/bin /usr/local/bin/bin
COPY etc/passwd etc/group /etc/
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/bin"]

FROM scratch AS other
RUN true
"#;

    #[test]
    fn reads_the_final_stage() {
        let args = BTreeMap::from([("VERSION".to_owned(), "1.2.3".to_owned())]);
        let plan = plan(DOCKERFILE, "server", &args).unwrap();
        assert_eq!(plan.user.as_deref(), Some("65532:65532"));
        assert_eq!(plan.entrypoint, Some(vec!["/usr/local/bin/bin".to_owned()]));
        assert_eq!(plan.exposed_ports, ["8080/tcp"]);
        assert_eq!(plan.labels["a"], "one two");
        assert_eq!(plan.labels["b"], "1.2.3");
        assert_eq!(plan.copies.len(), 2);
        assert_eq!(plan.copies[0].from.as_deref(), Some("build"));
        assert_eq!(plan.copies[1].sources, ["etc/passwd", "etc/group"]);
        assert_eq!(plan.copies[1].destination, "/etc/");
        assert_eq!(plan.copies[1].line, 11);
        let defaults = plan_of("server");
        assert_eq!(defaults.labels["b"], "dev");
    }

    fn plan_of(target: &str) -> ImagePlan {
        plan(DOCKERFILE, target, &BTreeMap::new()).unwrap()
    }

    #[test]
    fn refuses_what_it_cannot_reproduce() {
        let err = plan(DOCKERFILE, "other", &BTreeMap::new()).unwrap_err();
        assert!(
            err.to_string().contains("line 17: RUN in stage other"),
            "{err}"
        );
        let err = plan(DOCKERFILE, "build", &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("starts FROM rust"), "{err}");
        let err = plan(DOCKERFILE, "missing", &BTreeMap::new()).unwrap_err();
        assert!(
            err.to_string().contains("no stage named \"missing\""),
            "{err}"
        );
        let shell = DOCKERFILE.replace(r#"ENTRYPOINT ["/usr/local/bin/bin"]"#, "ENTRYPOINT bin");
        let err = plan(&shell, "server", &BTreeMap::new()).unwrap_err();
        assert!(
            err.to_string().contains("line 14: expected the exec form"),
            "{err}"
        );
        let chown = DOCKERFILE.replace("COPY etc/passwd", "COPY --chown=1:1 etc/passwd");
        let err = plan(&chown, "server", &BTreeMap::new()).unwrap_err();
        assert!(
            err.to_string()
                .contains("COPY --chown=1:1 is not supported"),
            "{err}"
        );
        let base = DOCKERFILE.replace("ARG RUNTIME=scratch", "ARG RUNTIME=debian");
        let err = plan(&base, "server", &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("starts FROM debian"), "{err}");
    }
}
