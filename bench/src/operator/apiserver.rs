//! Requests the apiserver served, from its own `/metrics` (`apiserver_request_total`), and who
//! made them.
//!
//! The metric has no client label, so requests are attributed by what they touch: the operator
//! is the only writer of bindings (besides the bench's own creates and its one change, counted
//! exactly and subtracted), of the children it server-side applies, of Secrets and of
//! `events.k8s.io` Events; the controller-manager owns ReplicaSets, Pods, Deployment status,
//! EndpointSlices and core Events; the bench's kubelet stand-in writes `pods/status` only.
//! Leases are renewed by the operator's leader election and by the apiserver itself, so they are
//! kept apart. Watches of the operator, the controller-manager and the bench are opened before
//! the first snapshot, so a phase counts the requests made during it.

use std::collections::BTreeMap;
use std::fmt;

use kube::Client;

/// One request series: verb and what it touched (response codes summed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
}

impl Key {
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION"
        )
    }

    /// `resource[/subresource]`, with the group when it is not core.
    pub fn target(&self) -> String {
        let mut name = self.resource.clone();
        if !self.subresource.is_empty() {
            name = format!("{name}/{}", self.subresource);
        }
        if self.group.is_empty() {
            name
        } else {
            format!("{name}.{}", self.group)
        }
    }
}

/// Who made a request, as far as the resource tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Actor {
    Operator,
    ControllerManager,
    /// The bench's kubelet stand-in (pods/status) and its binding creates and change.
    Bench,
    /// Lease renewals: the operator's leader election and the apiserver's own identity lease.
    Leases,
    /// Anything else (discovery, namespaces, the apiserver's own bookkeeping).
    Other,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Actor::Operator => "operator",
            Actor::ControllerManager => "controller-manager",
            Actor::Bench => "bench",
            Actor::Leases => "leases",
            Actor::Other => "other",
        })
    }
}

/// The kinds the operator writes (children it applies, the password Secret, its Events).
const OPERATOR_RESOURCES: [(&str, &str); 8] = [
    ("", "serviceaccounts"),
    ("", "configmaps"),
    ("", "services"),
    ("", "secrets"),
    ("apps", "deployments"),
    ("policy", "poddisruptionbudgets"),
    ("networking.k8s.io", "networkpolicies"),
    ("events.k8s.io", "events"),
];

/// Attribution of one series (before the bench's own binding writes are subtracted).
pub fn actor(key: &Key) -> Actor {
    let (group, resource, sub) = (
        key.group.as_str(),
        key.resource.as_str(),
        key.subresource.as_str(),
    );
    if resource == "postgresmcpbindings" {
        return Actor::Operator;
    }
    if resource == "leases" {
        return Actor::Leases;
    }
    if resource == "pods" && sub == "status" && key.is_write() {
        return Actor::Bench;
    }
    // The controller-manager writes Deployment status (and only status).
    if group == "apps" && resource == "deployments" && sub == "status" {
        return Actor::ControllerManager;
    }
    if OPERATOR_RESOURCES.contains(&(group, resource)) {
        return Actor::Operator;
    }
    if matches!(
        resource,
        "replicasets" | "pods" | "endpointslices" | "endpoints" | "events"
    ) {
        return Actor::ControllerManager;
    }
    Actor::Other
}

/// `apiserver_request_total`, summed over response codes (and, separately, errors).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Requests {
    pub by_key: BTreeMap<Key, f64>,
    /// Responses with a 4xx/5xx code, by key.
    pub errors: BTreeMap<Key, f64>,
}

impl Requests {
    pub async fn scrape(client: &Client) -> anyhow::Result<Self> {
        let request = http::Request::get("/metrics").body(Vec::new())?;
        Ok(Self::parse(&client.request_text(request).await?))
    }

    pub fn parse(text: &str) -> Self {
        let mut requests = Self::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let labels = parse_labels(labels);
            let get = |name: &str| labels.get(name).cloned().unwrap_or_default();
            let key = Key {
                verb: get("verb"),
                group: get("group"),
                resource: get("resource"),
                subresource: get("subresource"),
            };
            if key.resource.is_empty() {
                continue; // non-resource URLs: /metrics, /healthz, discovery
            }
            *requests.by_key.entry(key.clone()).or_default() += value;
            if get("code").starts_with(['4', '5']) {
                *requests.errors.entry(key).or_default() += value;
            }
        }
        requests
    }

    /// What happened between `before` and `self`.
    pub fn since(&self, before: &Requests) -> Requests {
        let diff = |after: &BTreeMap<Key, f64>, before: &BTreeMap<Key, f64>| {
            after
                .iter()
                .filter_map(|(k, v)| {
                    let d = v - before.get(k).copied().unwrap_or(0.0);
                    (d > 0.0).then(|| (k.clone(), d))
                })
                .collect()
        };
        Requests {
            by_key: diff(&self.by_key, &before.by_key),
            errors: diff(&self.errors, &before.errors),
        }
    }

    /// Removes `count` requests of `key` (the bench's own writes on operator kinds).
    pub fn subtract(&mut self, key: &Key, count: f64) {
        if let Some(value) = self.by_key.get_mut(key) {
            *value = (*value - count).max(0.0);
        }
    }

    pub fn total(&self, filter: impl Fn(&Key) -> bool) -> f64 {
        self.by_key
            .iter()
            .filter(|(k, _)| filter(k))
            .fold(0.0, |sum, (_, v)| sum + v)
    }

    /// Requests of `who`, by verb.
    pub fn by_verb(&self, who: Actor) -> BTreeMap<String, f64> {
        let mut verbs = BTreeMap::new();
        for (key, value) in &self.by_key {
            if actor(key) == who && *value > 0.0 {
                *verbs.entry(key.verb.clone()).or_default() += value;
            }
        }
        verbs
    }

    pub fn writes_of(&self, who: Actor) -> f64 {
        self.total(|k| k.is_write() && actor(k) == who)
    }

    pub fn reads_of(&self, who: Actor) -> f64 {
        self.total(|k| !k.is_write() && actor(k) == who)
    }

    /// Write series of anyone but the lease renewals, for "nothing was written".
    pub fn writes_except_leases(&self) -> BTreeMap<Key, f64> {
        self.by_key
            .iter()
            .filter(|(k, v)| k.is_write() && actor(k) != Actor::Leases && **v > 0.0)
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// `a="x",b="y"` into a map (label values here never contain quotes or commas).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split("\",")
        .filter_map(|pair| {
            let (name, value) = pair.split_once("=\"")?;
            Some((
                name.trim().to_owned(),
                value.trim_end_matches('"').to_owned(),
            ))
        })
        .collect()
}

/// The key of the bench's binding creates.
pub fn binding_key(verb: &str) -> Key {
    Key {
        verb: verb.to_owned(),
        group: "pgmcp.dev".to_owned(),
        resource: "postgresmcpbindings".to_owned(),
        subresource: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# HELP apiserver_request_total x
apiserver_request_total{code="201",component="apiserver",dry_run="",group="pgmcp.dev",resource="postgresmcpbindings",scope="resource",subresource="",verb="POST",version="v1alpha1"} 10
apiserver_request_total{code="200",component="apiserver",dry_run="",group="pgmcp.dev",resource="postgresmcpbindings",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 7
apiserver_request_total{code="409",component="apiserver",dry_run="",group="pgmcp.dev",resource="postgresmcpbindings",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 1
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="APPLY",version="v1"} 4
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="status",verb="PUT",version="v1"} 9
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="status",verb="PATCH",version="v1"} 3
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="POST",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="",scope="",subresource="/metrics",verb="GET",version=""} 5
"#;

    #[test]
    fn requests_are_summed_over_codes_and_attributed_by_resource() {
        let r = Requests::parse(SAMPLE);
        let status = Key {
            verb: "PATCH".into(),
            group: "pgmcp.dev".into(),
            resource: "postgresmcpbindings".into(),
            subresource: "status".into(),
        };
        assert_eq!(r.by_key[&status], 8.0);
        assert_eq!(r.errors[&status], 1.0);
        assert_eq!(r.writes_of(Actor::Operator), 10.0 + 8.0 + 4.0);
        assert_eq!(r.writes_of(Actor::ControllerManager), 9.0 + 3.0);
        assert_eq!(r.writes_of(Actor::Bench), 3.0);
        assert_eq!(r.writes_of(Actor::Leases), 2.0);
        assert_eq!(r.writes_except_leases().len(), 6);
        assert_eq!(status.target(), "postgresmcpbindings/status.pgmcp.dev");
    }

    #[test]
    fn a_phase_counts_only_what_happened_during_it_minus_the_bench() {
        let before = Requests::parse(SAMPLE);
        let after = Requests::parse(&SAMPLE.replace("} 10\n", "} 25\n"));
        let mut delta = after.since(&before);
        assert_eq!(delta.total(|_| true), 15.0);
        delta.subtract(&binding_key("POST"), 15.0);
        assert_eq!(delta.writes_of(Actor::Operator), 0.0);
    }
}
