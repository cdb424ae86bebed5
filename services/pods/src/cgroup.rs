//! Requests and limits as cgroup v2 values, computed as the kubelet
//! computes them so a pod gets the same share of the node under Kelson as
//! under a kubelet.

use crate::spec::{CgroupValues, Resources, CPU_PERIOD_US};

/// cgroup v1 `cpu.shares` bounds, which the kubelet still computes first.
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;
/// The smallest `cpu.max` quota the kernel accepts.
const MIN_QUOTA_US: u64 = 1000;

/// `cpu.shares` for a CPU request: 1024 per core, at least 2 (what a
/// container without a request gets).
pub fn cpu_shares(request_millis: Option<u64>) -> u64 {
    let millis = request_millis.unwrap_or(0);
    (millis.saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// `cpu.weight` from `cpu.shares`: the kubelet's linear map of [2, 262144]
/// onto [1, 10000].
pub fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + ((shares - MIN_SHARES) * 9999) / (MAX_SHARES - MIN_SHARES)
}

/// The `cpu.max` quota for a CPU limit, per [`CPU_PERIOD_US`].
pub fn cpu_quota_us(limit_millis: u64) -> u64 {
    (limit_millis.saturating_mul(CPU_PERIOD_US) / 1000).max(MIN_QUOTA_US)
}

impl Resources {
    pub fn cgroup(&self) -> CgroupValues {
        CgroupValues {
            cpu_weight: cpu_weight(cpu_shares(self.cpu_request_millis)),
            cpu_max_quota_us: self.cpu_limit_millis.map(cpu_quota_us),
            memory_max: self.memory_limit_bytes,
            memory_min: self.memory_request_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_requests_become_weights_as_the_kubelet_computes_them() {
        // (request, shares, weight): kubeadm's 100m, 200m, 250m, whole cores.
        for (millis, shares, weight) in [
            (None, 2, 1),
            (Some(1), 2, 1),
            (Some(100), 102, 4),
            (Some(200), 204, 8),
            (Some(250), 256, 10),
            (Some(1000), 1024, 39),
            (Some(4000), 4096, 157),
            (Some(256_000), 262_144, 10_000),
            (Some(1_000_000), 262_144, 10_000),
        ] {
            assert_eq!(cpu_shares(millis), shares, "{millis:?}");
            assert_eq!(cpu_weight(shares), weight, "{millis:?}");
        }
    }

    #[test]
    fn limits_become_cpu_max_and_memory_max_and_requests_memory_min() {
        let r = Resources {
            cpu_request_millis: Some(250),
            cpu_limit_millis: Some(500),
            memory_request_bytes: Some(100 << 20),
            memory_limit_bytes: Some(1 << 30),
            ..Resources::default()
        };
        let cg = r.cgroup();
        assert_eq!(cg.cpu_weight, 10);
        assert_eq!(cg.cpu_max(), "50000 100000");
        assert_eq!(cg.memory_max(), "1073741824");
        assert_eq!(cg.memory_min, Some(100 << 20));
    }

    #[test]
    fn no_limits_mean_max_and_tiny_cpu_limits_get_the_kernels_minimum_quota() {
        let cg = Resources::default().cgroup();
        assert_eq!(
            (cg.cpu_weight, cg.cpu_max(), cg.memory_max(), cg.memory_min),
            (1, "max 100000".to_owned(), "max".to_owned(), None)
        );
        assert_eq!(cpu_quota_us(1), 1000);
        assert_eq!(cpu_quota_us(10), 1000);
        assert_eq!(cpu_quota_us(2500), 250_000);
    }
}
