//! The documentation as a reader meets it, without starting anything: every relative link in
//! every Markdown file of the repository leads to a file that exists and, when it names a
//! heading, to a heading that exists (GitHub's anchors); the VS Code configurations in
//! `examples/vscode/` have the fields VS Code's `mcp.json` reference documents, and nothing
//! else; and the agent instructions docs/agents.md recommends are the ones the Foundry sample
//! sends.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
use serde_json::Value;

fn root() -> PathBuf {
    pgmcp_tests::paths::workspace_root()
}

/// Every Markdown file of the repository, outside build output, caches and vendored trees.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                    walk(&path, out);
                }
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out.sort();
    out
}

/// GitHub's anchor for a heading: lower case, spaces to '-', every character that is not a
/// letter, digit, '-' or '_' dropped; a repeated anchor gets "-1", "-2", ….
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut heading: Option<String> = None;
    for event in Parser::new_ext(markdown, Options::all()) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(text) | Event::Code(text) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&text);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                let text = heading.take().unwrap_or_default();
                let slug: String = text
                    .trim()
                    .to_lowercase()
                    .chars()
                    .filter_map(|c| match c {
                        ' ' => Some('-'),
                        c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                        _ => None,
                    })
                    .collect();
                let n = seen.entry(slug.clone()).or_default();
                out.insert(if *n == 0 {
                    slug.clone()
                } else {
                    format!("{slug}-{n}")
                });
                *n += 1;
            }
            _ => {}
        }
    }
    out
}

/// The destinations of a file's links and images.
fn links(markdown: &str) -> Vec<String> {
    Parser::new_ext(markdown, Options::all())
        .filter_map(|event| match event {
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                Some(dest_url.into_string())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn every_relative_link_in_the_documentation_resolves() {
    let files = markdown_files();
    assert!(
        files.len() >= 10,
        "found only {files:?} under {}",
        root().display()
    );
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(root()).unwrap().display().to_string();
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") || link.is_empty() {
                continue;
            }
            let (path, anchor) = match link.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (link.as_str(), None),
            };
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            if !target.exists() {
                broken.push(format!("{shown}: {link} (no such file)"));
                continue;
            }
            if let Some(anchor) = anchor
                && target.extension().is_some_and(|e| e == "md")
            {
                let known = anchors(&std::fs::read_to_string(&target).unwrap());
                if !known.contains(anchor) {
                    broken.push(format!("{shown}: {link} (no heading with that anchor)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_follow_github() {
    let known = anchors("# Callers → MCP server\n## `spec.postgres.host`\n## Try it\n## Try it\n");
    for anchor in [
        "callers--mcp-server",
        "specpostgreshost",
        "try-it",
        "try-it-1",
    ] {
        assert!(known.contains(anchor), "{anchor} in {known:?}");
    }
}

/// Whether `object` has the `required` fields and no field outside `required` and `optional`.
fn fields(
    errors: &mut Vec<String>,
    object: &Value,
    what: &str,
    required: &[&str],
    optional: &[&str],
) {
    let Some(map) = object.as_object() else {
        errors.push(format!("{what} is not an object"));
        return;
    };
    for field in required {
        if !map.contains_key(*field) {
            errors.push(format!("{what} lacks {field}"));
        }
    }
    for field in map.keys() {
        if !required.contains(&field.as_str()) && !optional.contains(&field.as_str()) {
            errors.push(format!(
                "{what} has {field}, which VS Code does not document"
            ));
        }
    }
}

/// What VS Code's MCP configuration reference documents for `mcp.json`: `servers` (required)
/// and `inputs`; a stdio server has `type`, `command` (required), `args`, `env`, `envFile`,
/// `sandboxEnabled`, `sandbox`, `dev`; an http or sse server `type`, `url` (required),
/// `headers`, `oauth` (`clientId`, required), `dev`; an input `type` (`promptString`), `id` and
/// `description` (required), `password`. Every `${input:…}` must name a declared input.
fn vscode_config_errors(config: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    fields(&mut errors, config, "the file", &["servers"], &["inputs"]);
    let mut declared = BTreeSet::new();
    for (i, input) in config["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let what = format!("inputs[{i}]");
        fields(
            &mut errors,
            input,
            &what,
            &["type", "id", "description"],
            &["password"],
        );
        if input["type"] != "promptString" {
            errors.push(format!("{what}.type is not promptString"));
        }
        declared.insert(input["id"].as_str().unwrap_or_default().to_owned());
    }
    let servers = config["servers"].as_object().cloned().unwrap_or_default();
    if servers.is_empty() {
        errors.push("servers is empty".to_owned());
    }
    for (name, server) in &servers {
        let what = format!("servers.{name}");
        match server["type"].as_str() {
            Some("http" | "sse") => {
                fields(
                    &mut errors,
                    server,
                    &what,
                    &["type", "url"],
                    &["headers", "oauth", "dev"],
                );
                let url = server["url"].as_str().unwrap_or_default();
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    errors.push(format!("{what}.url is not an http(s) URL: {url}"));
                }
                for (header, value) in server["headers"].as_object().into_iter().flatten() {
                    if !value.is_string() {
                        errors.push(format!("{what}.headers.{header} is not a string"));
                    }
                }
                if !server["oauth"].is_null() {
                    fields(
                        &mut errors,
                        &server["oauth"],
                        &format!("{what}.oauth"),
                        &["clientId"],
                        &[],
                    );
                }
            }
            Some("stdio") => fields(
                &mut errors,
                server,
                &what,
                &["type", "command"],
                &["args", "env", "envFile", "sandboxEnabled", "sandbox", "dev"],
            ),
            other => errors.push(format!("{what}.type is {other:?}, not stdio, http or sse")),
        }
        let text = server.to_string();
        for used in text.split("${input:").skip(1) {
            let id = used.split('}').next().unwrap_or_default();
            if !declared.contains(id) {
                errors.push(format!(
                    "{what} uses ${{input:{id}}}, which inputs does not declare"
                ));
            }
        }
    }
    errors
}

#[test]
fn the_vscode_configurations_have_the_fields_vscode_documents() {
    let dir = root().join("examples/vscode");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let errors = vscode_config_errors(&config);
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        checked += 1;
    }
    assert_eq!(checked, 2, "mcp.json (Entra sign-in) and mcp-token.json");

    // The check refuses what VS Code would not read.
    let wrong = serde_json::json!({
        "mcpServers": {},
        "servers": {"db": {"type": "http", "uri": "https://x/mcp",
                           "headers": {"Authorization": "Bearer ${input:token}"}}}
    });
    let errors = vscode_config_errors(&wrong);
    for expected in [
        "the file has mcpServers",
        "servers.db lacks url",
        "servers.db has uri",
        "servers.db uses ${input:token}",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{expected}: {errors:?}"
        );
    }
}

#[test]
fn the_recommended_agent_instructions_are_the_ones_the_sample_sends() {
    let instructions =
        std::fs::read_to_string(root().join("examples/foundry-agent/instructions.md")).unwrap();
    let docs = std::fs::read_to_string(root().join("docs/agents.md")).unwrap();
    let shown = instructions.replace("{label}", "sales");
    assert!(
        docs.contains(&shown),
        "docs/agents.md does not show examples/foundry-agent/instructions.md (with label \
         \"sales\") verbatim:\n{shown}"
    );
}
