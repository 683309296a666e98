//! The JSON view of a hash ring served on `GET /api/v1/cluster/ring`, in the shape the original
//! LimeDB's ring endpoint had: `totalNodes`, `virtualNodes`, `virtualNodesPerNode`,
//! `virtualNodeDistribution`, `ranges` and `rangesDegrees` keyed by member, plus the ownership
//! share of each member and statistics of how evenly the hash space is spread.
//!
//! Hash values are unsigned 64-bit integers (xxh3 of the key, see `limedb_cluster::key_hash`),
//! written as exact JSON integers; `rangesDegrees` maps them onto a 360° circle.

use std::collections::BTreeMap;

use limedb_cluster::{Ring, ShardId};
use serde_json::{json, Map, Value};

const HASH_SPACE: f64 = 18_446_744_073_709_551_616.0; // 2^64

fn degrees(hash: u64) -> f64 {
    let d = hash as f64 / HASH_SPACE * 360.0;
    (d * 1e6).round() / 1e6
}

/// The ring as JSON; `label` names each member (its URL on the coordinator).
pub fn ring_json(ring: &Ring, label: &dyn Fn(ShardId) -> String) -> Value {
    let mut distribution: BTreeMap<String, u64> = BTreeMap::new();
    let mut ranges: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut ranges_degrees: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for vnode in ring.vnodes() {
        *distribution.entry(label(vnode.shard)).or_default() += 1;
    }
    for range in ring.ranges() {
        let member = label(range.shard);
        ranges.entry(member.clone()).or_default().push(json!({
            "start": range.start,
            "end": range.end,
            "hash": range.vnode_point,
            "size": range.size,
        }));
        ranges_degrees.entry(member).or_default().push(json!({
            "start": degrees(range.start),
            "end": degrees(range.end),
            "hash": degrees(range.vnode_point),
            "size": (range.size as f64 / HASH_SPACE * 360.0 * 1e6).round() / 1e6,
        }));
    }
    let ownership = ring.ownership();
    let shares: Vec<f64> = ownership.values().copied().collect();
    let n = shares.len().max(1) as f64;
    let mean = 1.0 / n;
    let min = shares.iter().copied().fold(f64::INFINITY, f64::min);
    let max = shares.iter().copied().fold(0.0, f64::max);
    let variance = shares.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n;
    let max_deviation_pct = shares
        .iter()
        .map(|s| ((s - mean) / mean).abs() * 100.0)
        .fold(0.0, f64::max);
    let ownership_json: Map<String, Value> = ownership
        .iter()
        .map(|(shard, share)| (label(*shard), json!(share)))
        .collect();
    json!({
        "totalNodes": ring.shards().len(),
        "virtualNodes": ring.vnode_count(),
        "virtualNodesPerNode": ring.vnodes_per_shard(),
        "hashFunction": "xxh3-64 (seed 0) of the key bytes",
        "virtualNodeDistribution": distribution,
        "ranges": ranges,
        "rangesDegrees": ranges_degrees,
        "ownership": ownership_json,
        "keySpread": {
            "expectedShare": mean,
            "minShare": if shares.is_empty() { 0.0 } else { min },
            "maxShare": max,
            "stddev": variance.sqrt(),
            "maxDeviationPct": max_deviation_pct,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_json_has_the_original_fields_and_consistent_counts() {
        let ring = Ring::new(&[ShardId(1), ShardId(2), ShardId(3)], 16).expect("ring");
        let v = ring_json(&ring, &|s| format!("http://127.0.0.1:700{s}"));
        assert_eq!(v["totalNodes"], 3);
        assert_eq!(v["virtualNodes"], 48);
        assert_eq!(v["virtualNodesPerNode"], 16);
        assert_eq!(v["virtualNodeDistribution"]["http://127.0.0.1:7002"], 16);
        let ranges: usize = v["ranges"]
            .as_object()
            .expect("ranges object")
            .values()
            .map(|r| r.as_array().map_or(0, Vec::len))
            .sum();
        assert!(ranges >= 48, "every vnode owns a range");
        let share_sum: f64 = v["ownership"]
            .as_object()
            .expect("ownership")
            .values()
            .filter_map(Value::as_f64)
            .sum();
        assert!((share_sum - 1.0).abs() < 1e-9);
        assert!(v["rangesDegrees"]["http://127.0.0.1:7001"][0]["end"]
            .as_f64()
            .is_some());
    }
}
