//! Checks after the faults, on a converged cluster: every acknowledged annotation is stored,
//! fused and searchable on every node, and the replicas of each shard are identical.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rushes_protocol::{Clause, Filters, SearchRequest};

use crate::cluster::LocalCluster;
use crate::http::{encode_segment, Http};
use crate::node::LocalNode;
use crate::workload::Sample;

/// Largest bucket range one `GET .../buckets` may ask for (the node's limit is 3600 buckets).
const BUCKET_PAGE_MS: u64 = 3_600_000;

#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// `fusion.bucket_ms` of the nodes.
    pub bucket_ms: u64,
    /// Label searches per asset and node (spread over the asset's acknowledged labels).
    pub labels_per_asset: usize,
    /// `per_asset` of those searches.
    pub per_asset: usize,
    /// Threads per node fetching raw annotations.
    pub threads_per_node: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { bucket_ms: 1000, labels_per_asset: 8, per_asset: 100, threads_per_node: 2 }
    }
}

/// What was checked and every violation found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub nodes: usize,
    pub acknowledged: usize,
    pub raw_lookups: usize,
    pub buckets: usize,
    pub searches: usize,
    pub shards_compared: usize,
    pub took: Duration,
    pub violations: Vec<String>,
}

impl CheckReport {
    pub fn summary(&self) -> String {
        format!(
            "{} nodes, {} acknowledged annotations, {} raw lookups, {} buckets, {} searches, {} shards' digests compared in {:.1?}: {} violations",
            self.nodes,
            self.acknowledged,
            self.raw_lookups,
            self.buckets,
            self.searches,
            self.shards_compared,
            self.took,
            self.violations.len()
        )
    }

    /// Panics listing the first violations, if any.
    pub fn assert_ok(&self) {
        if !self.violations.is_empty() {
            let mut message = format!("{}\n", self.summary());
            for v in self.violations.iter().take(40) {
                let _ = writeln!(message, "  - {v}");
            }
            if self.violations.len() > 40 {
                let _ = writeln!(message, "  ... and {} more", self.violations.len() - 40);
            }
            panic!("{message}");
        }
    }
}

/// Runs every check against every serving node. Call it once the cluster has converged.
pub fn check_cluster(cluster: &LocalCluster, sample: &Sample, acknowledged: &BTreeSet<usize>, options: &CheckOptions) -> CheckReport {
    let started = Instant::now();
    let nodes: Vec<&LocalNode> = cluster.nodes().iter().filter(|n| n.is_serving()).collect();
    let mut report = CheckReport { nodes: nodes.len(), acknowledged: acknowledged.len(), ..Default::default() };
    if nodes.len() != cluster.nodes().len() {
        report.violations.push(format!("only {} of {} nodes are serving during the checks", nodes.len(), cluster.nodes().len()));
    }
    let acknowledged: Vec<usize> = acknowledged.iter().copied().collect();

    // 1. Raw store: GET every acknowledged annotation from every node; same JSON as sent.
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for node in &nodes {
            for part in 0..options.threads_per_node.max(1) {
                let acknowledged = &acknowledged;
                handles.push(scope.spawn(move || {
                    let http = Http::new(Duration::from_secs(15));
                    let mut violations = Vec::new();
                    let mut lookups = 0;
                    for &i in acknowledged.iter().skip(part).step_by(options.threads_per_node.max(1)) {
                        let a = &sample.annotations[i];
                        let url = node.url(&format!("/v1/assets/{}/annotations/{}", encode_segment(&a.asset_id), encode_segment(&a.id)));
                        lookups += 1;
                        match http.get(&url) {
                            Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                                Ok(value) if value == a.raw => {}
                                Ok(value) => violations
                                    .push(format!("node {}: annotation {} is stored as {value} instead of {}", node.id, a.id, a.raw)),
                                Err(e) => violations.push(format!("node {}: annotation {} is not JSON ({e}): {text:.200}", node.id, a.id)),
                            },
                            Err(e) => {
                                violations.push(format!("node {}: acknowledged annotation {}/{} missing: {e}", node.id, a.asset_id, a.id))
                            }
                        }
                    }
                    (lookups, violations)
                }));
            }
        }
        for handle in handles {
            let (lookups, violations) = handle.join().expect("raw check thread");
            report.raw_lookups += lookups;
            report.violations.extend(violations);
        }
    });

    // 2. Fused buckets, per node and asset.
    let mut acknowledged_by_asset: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for &i in &acknowledged {
        acknowledged_by_asset.entry(sample.annotations[i].asset_id.as_str()).or_default().push(i);
    }
    let mut end_by_asset: BTreeMap<&str, u64> = BTreeMap::new();
    for a in &sample.annotations {
        let end = end_by_asset.entry(a.asset_id.as_str()).or_default();
        *end = (*end).max(a.end_ms);
    }
    let http = Http::new(Duration::from_secs(30));
    // (asset, node) → second → bucket entries
    let mut timelines: BTreeMap<(&str, u64), BTreeMap<u64, Vec<serde_json::Value>>> = BTreeMap::new();
    for (&asset, acked) in &acknowledged_by_asset {
        for node in &nodes {
            let timeline = match fetch_timeline(&http, node, asset, end_by_asset[asset]) {
                Ok(timeline) => timeline,
                Err(e) => {
                    report.violations.push(format!("node {}: buckets of {asset}: {e}", node.id));
                    continue;
                }
            };
            report.buckets += timeline.len();
            check_timeline(sample, node.id, asset, acked, &timeline, options.bucket_ms, &mut report.violations);
            timelines.insert((asset, node.id), timeline);
        }
        // Every replica fused the same timeline.
        let mut per_node = nodes.iter().filter_map(|n| timelines.get(&(asset, n.id)).map(|t| (n.id, t)));
        if let Some((first_id, first)) = per_node.next() {
            for (id, timeline) in per_node {
                if timeline != first {
                    let differing = first.keys().chain(timeline.keys()).find(|s| first.get(s) != timeline.get(s));
                    report
                        .violations
                        .push(format!("buckets of {asset} differ between node {first_id} and node {id} (first at second {differing:?})"));
                }
            }
        }
    }

    // 3. Search with a structured filter on the asset, from every node.
    for (&asset, acked) in &acknowledged_by_asset {
        let labels: BTreeSet<(&str, &str)> = acked
            .iter()
            .filter_map(|i| sample.annotations[*i].label.as_deref().map(|l| (sample.annotations[*i].track.as_str(), l)))
            .collect();
        let labels: Vec<(&str, &str)> = labels.into_iter().collect();
        let step = (labels.len() / options.labels_per_asset.max(1)).max(1);
        let chosen: Vec<(&str, &str)> = labels.iter().step_by(step).take(options.labels_per_asset).copied().collect();
        for node in &nodes {
            let Some(timeline) = timelines.get(&(asset, node.id)) else { continue };
            for (track, label) in &chosen {
                report.searches += 1;
                if let Err(e) = check_search(&http, node, asset, track, label, timeline, options) {
                    report.violations.push(format!("node {}: search {track}={label} on {asset}: {e}", node.id));
                }
            }
        }
    }

    // 4. Raw digests (and counts) of all replicas of a shard are equal.
    let mut by_shard: BTreeMap<u32, Vec<(u64, String)>> = BTreeMap::new();
    for ((shard, node), digest) in cluster.digests() {
        by_shard.entry(shard).or_default().push((node, digest));
    }
    for shard in 0..cluster.options.shards {
        report.shards_compared += 1;
        let replicas = by_shard.get(&shard).cloned().unwrap_or_default();
        if replicas.len() != cluster.options.replication_factor {
            report.violations.push(format!(
                "shard {shard}: {} replicas reported a digest ({replicas:?}), expected {}",
                replicas.len(),
                cluster.options.replication_factor
            ));
        }
        if replicas.windows(2).any(|w| w[0].1 != w[1].1) {
            report.violations.push(format!("shard {shard}: raw digests differ between replicas: {replicas:?}"));
        }
    }
    let mut counts: BTreeMap<u32, Vec<(u64, Option<u64>)>> = BTreeMap::new();
    for ((shard, node), count) in cluster.raw_counts() {
        counts.entry(shard).or_default().push((node, count));
    }
    let mut raw_total = 0;
    for (shard, replicas) in counts {
        if replicas.windows(2).any(|w| w[0].1 != w[1].1) {
            report.violations.push(format!("shard {shard}: raw annotation counts differ between replicas: {replicas:?}"));
        }
        raw_total += replicas.first().and_then(|(_, count)| *count).unwrap_or(0);
    }
    // 5. The raw totals hold every acknowledged annotation, and beyond them at most the
    //    annotations of batches whose outcome the writers never learned.
    let unacknowledged = sample.annotations.len().saturating_sub(acknowledged.len()) as u64;
    if raw_total < acknowledged.len() as u64 || raw_total > acknowledged.len() as u64 + unacknowledged {
        report.violations.push(format!(
            "the shards hold {raw_total} raw annotations; {} were acknowledged and {unacknowledged} were never answered",
            acknowledged.len()
        ));
    }
    // 6. On every replica of every node, the index holds one document per fused bucket.
    for (id, status) in cluster.statuses(false) {
        let Ok(status) = status else { continue };
        for (shard, replica) in status.local_replicas() {
            if replica.buckets.is_none() || replica.buckets != replica.index_docs {
                report
                    .violations
                    .push(format!("node {id} shard {shard}: {:?} buckets but {:?} index documents", replica.buckets, replica.index_docs));
            }
        }
    }

    report.took = started.elapsed();
    report
}

/// All buckets of `asset` on `node` up to `end_ms`: second → entries.
fn fetch_timeline(http: &Http, node: &LocalNode, asset: &str, end_ms: u64) -> Result<BTreeMap<u64, Vec<serde_json::Value>>, String> {
    let mut timeline = BTreeMap::new();
    let mut from_ms = 0;
    while from_ms < end_ms {
        let to_ms = from_ms + BUCKET_PAGE_MS;
        let url = node.url(&format!("/v1/assets/{}/buckets?from_ms={from_ms}&to_ms={to_ms}", encode_segment(asset)));
        let reply = http.get_json(&url).map_err(|e| e.to_string())?;
        let buckets = reply["buckets"].as_array().ok_or_else(|| format!("no buckets array in {reply:.300}"))?;
        for bucket in buckets {
            let second = bucket["second"].as_u64().ok_or_else(|| format!("bucket without second: {bucket}"))?;
            let entries = bucket["annotations"].as_array().ok_or_else(|| format!("bucket without annotations: {bucket}"))?;
            if timeline.insert(second, entries.clone()).is_some() {
                return Err(format!("second {second} returned twice"));
            }
        }
        from_ms = to_ms;
    }
    Ok(timeline)
}

/// Every acknowledged annotation is in every bucket it covers exactly once; nothing is in a
/// bucket it does not cover; nothing unknown is fused.
fn check_timeline(
    sample: &Sample,
    node: u64,
    asset: &str,
    acknowledged: &[usize],
    timeline: &BTreeMap<u64, Vec<serde_json::Value>>,
    bucket_ms: u64,
    violations: &mut Vec<String>,
) {
    let mut ids_per_second: BTreeMap<u64, BTreeMap<&str, usize>> = BTreeMap::new();
    for (second, entries) in timeline {
        let ids = ids_per_second.entry(*second).or_default();
        for entry in entries {
            let Some(id) = entry["annotation_id"].as_str() else {
                violations.push(format!("node {node}: {asset} second {second}: entry without annotation_id: {entry}"));
                continue;
            };
            *ids.entry(id).or_default() += 1;
            match sample.index_of(asset, id) {
                None => violations.push(format!("node {node}: {asset} second {second}: unknown annotation {id}")),
                Some(i) if !sample.annotations[i].buckets(bucket_ms).contains(second) => {
                    violations.push(format!("node {node}: {asset} second {second}: annotation {id} does not cover it"))
                }
                Some(_) => {}
            }
        }
    }
    for ids in ids_per_second.values() {
        for (id, count) in ids {
            if *count > 1 {
                violations.push(format!("node {node}: {asset}: annotation {id} appears {count} times in one bucket"));
            }
        }
    }
    for &i in acknowledged {
        let a = &sample.annotations[i];
        let missing: Vec<u64> =
            a.buckets(bucket_ms).filter(|s| ids_per_second.get(s).and_then(|ids| ids.get(a.id.as_str())).is_none()).collect();
        if !missing.is_empty() {
            violations.push(format!(
                "node {node}: acknowledged annotation {asset}/{} is missing from {} of its buckets (first: second {})",
                a.id,
                missing.len(),
                missing[0]
            ));
        }
    }
}

/// A label search filtered on `asset` returns the asset, and exactly the seconds whose buckets
/// hold the label (when the clips fit in `per_asset`).
fn check_search(
    http: &Http,
    node: &LocalNode,
    asset: &str,
    track: &str,
    label: &str,
    timeline: &BTreeMap<u64, Vec<serde_json::Value>>,
    options: &CheckOptions,
) -> Result<(), String> {
    let request = SearchRequest {
        clauses: Some(vec![Clause::Label {
            label: label.to_string(),
            track: Some(track.to_string()),
            min_confidence: Some(0.0),
            weight: None,
        }]),
        filters: Some(Filters { asset_ids: Some(vec![asset.to_string()]), ..Default::default() }),
        per_asset: Some(options.per_asset),
        ..Default::default()
    };
    let body = serde_json::to_value(&request).map_err(|e| e.to_string())?;
    let reply = http.post_json(&node.url("/v1/search"), &body).map_err(|e| e.to_string())?;
    if reply["shards"]["failed"].as_u64().unwrap_or(0) != 0 {
        return Err(format!("shards failed: {}", reply["shards"]));
    }
    let assets = reply["assets"].as_array().ok_or_else(|| format!("no assets array in {reply:.300}"))?;
    let Some(hit) = assets.iter().find(|a| a["asset_id"] == asset) else {
        return Err(format!("the asset is not returned ({} other assets)", assets.len()));
    };
    if assets.len() != 1 {
        return Err(format!("the filter on {asset} returned {} assets", assets.len()));
    }
    let clips = hit["clips"].as_array().ok_or("no clips")?;
    let mut returned = BTreeSet::new();
    for clip in clips {
        let (start, end) =
            (clip["start_ms"].as_u64().ok_or("clip without start_ms")?, clip["end_ms"].as_u64().ok_or("clip without end_ms")?);
        returned.extend((start / options.bucket_ms)..end.div_ceil(options.bucket_ms));
    }
    let expected: BTreeSet<u64> = timeline
        .iter()
        .filter(|(_, entries)| entries.iter().any(|e| e["track"] == track && e["label"] == label))
        .map(|(second, _)| *second)
        .collect();
    let fits = clips.len() < options.per_asset;
    if (fits && returned != expected) || (!fits && !returned.is_subset(&expected)) {
        let extra: Vec<_> = returned.difference(&expected).take(5).collect();
        let missing: Vec<_> = expected.difference(&returned).take(5).collect();
        return Err(format!(
            "returned {} seconds, the buckets hold the label in {} (extra {extra:?}, missing {missing:?})",
            returned.len(),
            expected.len()
        ));
    }
    Ok(())
}
