//! Resource figures: a [`ResourceList`] of quantities as written, [`Resources`] as plain numbers, and a
//! container's [`ResourceRequirements`].

use super::meta::*;
use super::quantity::Quantity;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type ResourceList = BTreeMap<String, Quantity>;

/// A container's memory and CPU limits as plain numbers; `None` where no limit is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
}

/// CPU, memory and pod count as plain numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pods: u64,
}

impl Resources {
    /// Read `cpu`, `memory` and `pods` from a resource list; other resources are not counted.
    pub fn from_list(list: &ResourceList) -> Resources {
        Resources {
            cpu_millis: list.get("cpu").map(Quantity::millis).unwrap_or(0),
            memory_bytes: list.get("memory").map(Quantity::units).unwrap_or(0),
            pods: list.get("pods").map(Quantity::units).unwrap_or(0),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequirements {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: ResourceList,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: ResourceList,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<Ignored>,
}

impl ResourceRequirements {
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty() && self.claims.is_none()
    }

    /// Requests, where a resource with only a limit requests its limit.
    pub fn effective_requests(&self) -> Resources {
        let pick = |k: &str| self.requests.get(k).or_else(|| self.limits.get(k));
        Resources {
            cpu_millis: pick("cpu").map(Quantity::millis).unwrap_or(0),
            memory_bytes: pick("memory").map(Quantity::units).unwrap_or(0),
            pods: 0,
        }
    }

    /// The memory and CPU limits, as the runtimes enforce them.
    pub fn limits(&self) -> Limits {
        Limits {
            memory_bytes: self.limits.get("memory").map(Quantity::units),
            cpu_millis: self.limits.get("cpu").map(Quantity::millis),
        }
    }

    pub(crate) fn check(&self, p: &str, cx: &mut Check) -> CheckResult {
        for (what, list) in [("requests", &self.requests), ("limits", &self.limits)] {
            for name in list.keys() {
                let rp = join(&join(p, what), name);
                match name.as_str() {
                    "cpu" | "memory" => {}
                    "pods" => return Err(field_err(rp, "not a container resource")),
                    other => {
                        if discovery::labels::validate_key(other).is_err() {
                            return Err(field_err(rp, "invalid resource name"));
                        }
                        cx.warn(&rp, "resource not managed by Berth (neither scheduled nor enforced)");
                    }
                }
            }
        }
        for (name, limit) in &self.limits {
            if let Some(req) = self.requests.get(name) {
                if req.value_cmp(limit) == std::cmp::Ordering::Greater {
                    return Err(field_err(
                        join(&join(p, "requests"), name),
                        format!("request {req} must not exceed limit {limit}"),
                    ));
                }
            }
        }
        cx.ignored(p, "claims", &self.claims);
        Ok(())
    }
}
