//! What every project's runners need: the ResourceQuota `ambient-project-quota` and LimitRange
//! `ambient-project-limits`, from the operator's defaults (reconciler flags), and the runner
//! ServiceAccount `ambient-runner` every runner pod of the project runs as (it holds no RBAC
//! rights; the api decides what a runner may do from the pod its token is bound to).
//! Level-triggered: a managed namespace gets all three, and a change or deletion of any is put
//! back.
//!
//! - Owner: the project's Namespace (a namespaced object may have a cluster-scoped owner). Not
//!   the ProjectSettings: a project admin may delete that object, and the garbage collector
//!   would take the quota with it. Nobody but the reconciler and cluster admins can delete a
//!   project's Namespace, and with it everything in it goes anyway.
//! - Written by server-side apply with the reconciler's field manager; only what the operator
//!   configured is declared, so a change of the defaults reaches every project on its next pass.
//! - Tenants cannot change them: no project role (nor the built-in admin/edit roles the CRDs
//!   aggregate into) grants writes on resourcequotas or limitranges.
//! - The LimitRange's per-container `max` is the runner bounds (`--runner-max-cpu`,
//!   `--runner-max-memory`): the API server itself refuses a runner pod beyond them.
//! - The session controller calls [`Limits::ensure`] before it creates a runner Job, so no
//!   runner pod exists in a project before its quota does, nor before its ServiceAccount (the
//!   controller's first pass after a project's creation may come later than its first session).
//! - A project admin may delete the ServiceAccount (the admin role manages access keys'): it is
//!   put back, and the project's running runners lose their tokens, in that project only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio_util::sync::CancellationToken;

use events::crd::runner::SERVICE_ACCOUNT;
use events::crd::{Amount, RunnerBounds};

use super::{ControllerError, ERROR_REQUEUE};
use crate::labels;

/// Name of every project's ResourceQuota.
pub const QUOTA_NAME: &str = "ambient-project-quota";
/// Name of every project's LimitRange.
pub const LIMIT_RANGE_NAME: &str = "ambient-project-limits";
/// `app` label of the three.
pub const APP_PROJECT_LIMITS: &str = "ambient-project-limits";

/// One hard limit of the project quota: `resource=quantity`, e.g. `requests.cpu=20`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaItem {
    /// The quota resource name (`requests.cpu`, `limits.memory`, `pods`, `count/jobs.batch`…).
    pub resource: String,
    /// The quantity as the operator wrote it.
    pub quantity: String,
    /// The same, parsed.
    pub amount: Amount,
}

impl QuotaItem {
    /// Parses `resource=quantity`.
    pub fn parse(s: &str) -> Result<QuotaItem, String> {
        let (resource, quantity) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected resource=quantity"))?;
        let (resource, quantity) = (resource.trim(), quantity.trim());
        if resource.is_empty()
            || resource.len() > 253
            || !resource.bytes().all(|b| b.is_ascii_alphanumeric() || b"./-_".contains(&b))
        {
            return Err(format!("{s:?}: {resource:?} is not a quota resource name"));
        }
        let amount = Amount::parse(quantity).map_err(|e| format!("{s:?}: {quantity:?} {e}"))?;
        Ok(QuotaItem { resource: resource.into(), quantity: quantity.into(), amount })
    }
}

/// CPU and memory of a container.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuMemory {
    /// CPU.
    pub cpu: Amount,
    /// Memory.
    pub memory: Amount,
}

impl CpuMemory {
    fn quantities(self) -> BTreeMap<String, Quantity> {
        BTreeMap::from([
            ("cpu".into(), Quantity(self.cpu.cpu_string())),
            ("memory".into(), Quantity(self.memory.memory_string())),
        ])
    }

    fn at_most(self, other: CpuMemory) -> bool {
        self.cpu <= other.cpu && self.memory <= other.memory
    }
}

/// A container's local disk (`ephemeral-storage`): its default request and limit, and the most
/// it may have. Without a bound one runner could fill its node's disk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Disk {
    /// Request of a container that sets none.
    pub request: Amount,
    /// Limit of a container that sets none.
    pub limit: Amount,
    /// Most a container may have.
    pub max: Amount,
}

/// What every project gets: its quota and its containers' defaults and maxima.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectLimits {
    /// Hard limits of the ResourceQuota.
    pub quota: Vec<QuotaItem>,
    /// Requests of a container that sets none (a runner without `resourceOverrides`).
    pub default_request: CpuMemory,
    /// Limits of a container that sets none.
    pub default_limit: CpuMemory,
    /// Most a container may have: the runner bounds.
    pub max: CpuMemory,
    /// Local disk.
    pub disk: Disk,
}

impl ProjectLimits {
    /// Checks that defaults fit: request ≤ limit ≤ the runner bounds (the API server would
    /// refuse such a LimitRange, or every pod under it).
    pub fn new(
        quota: Vec<QuotaItem>,
        default_request: CpuMemory,
        default_limit: CpuMemory,
        disk: Disk,
        bounds: &RunnerBounds,
    ) -> Result<Self, String> {
        let max = CpuMemory { cpu: bounds.max_cpu, memory: bounds.max_memory };
        if quota.is_empty() {
            return Err("the project quota has no hard limits".into());
        }
        if !default_request.at_most(default_limit) {
            return Err("a runner's default requests exceed its default limits".into());
        }
        if !default_limit.at_most(max) {
            return Err("a runner's default limits exceed --runner-max-cpu / --runner-max-memory".into());
        }
        if !(disk.request <= disk.limit && disk.limit <= disk.max) {
            return Err(
                "a runner's default ephemeral-storage request, limit and maximum must grow in that order".into()
            );
        }
        Ok(ProjectLimits { quota, default_request, default_limit, max, disk })
    }

    fn hard(&self) -> BTreeMap<String, Quantity> {
        self.quota.iter().map(|q| (q.resource.clone(), Quantity(q.quantity.clone()))).collect()
    }

    fn container(&self) -> LimitRangeItem {
        let with_disk = |mut q: BTreeMap<String, Quantity>, disk: Amount| {
            q.insert("ephemeral-storage".into(), Quantity(disk.memory_string()));
            q
        };
        LimitRangeItem {
            type_: "Container".into(),
            default: Some(with_disk(self.default_limit.quantities(), self.disk.limit)),
            default_request: Some(with_disk(self.default_request.quantities(), self.disk.request)),
            max: Some(with_disk(self.max.quantities(), self.disk.max)),
            ..Default::default()
        }
    }

    fn meta(ns: &Namespace, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.name_any()),
            labels: Some(crate::apply::string_map([(labels::APP, APP_PROJECT_LIMITS)])),
            owner_references: Some(vec![owner(ns)]),
            ..Default::default()
        }
    }

    /// The project's ResourceQuota.
    pub fn resource_quota(&self, ns: &Namespace) -> ResourceQuota {
        ResourceQuota {
            metadata: Self::meta(ns, QUOTA_NAME),
            spec: Some(ResourceQuotaSpec { hard: Some(self.hard()), ..Default::default() }),
            ..Default::default()
        }
    }

    /// The project's LimitRange.
    pub fn limit_range(&self, ns: &Namespace) -> LimitRange {
        LimitRange {
            metadata: Self::meta(ns, LIMIT_RANGE_NAME),
            spec: Some(LimitRangeSpec { limits: vec![self.container()] }),
        }
    }

    /// The project's runner ServiceAccount.
    pub fn runner_account(&self, ns: &Namespace) -> ServiceAccount {
        ServiceAccount { metadata: Self::meta(ns, SERVICE_ACCOUNT), ..Default::default() }
    }

    /// Whether `q` has exactly the configured hard limits (compared as quantities: the API
    /// server re-spells them, e.g. `1000m` as `1`).
    fn quota_current(&self, q: &ResourceQuota) -> bool {
        let have = q.spec.as_ref().and_then(|s| s.hard.as_ref());
        have.is_some_and(|h| same_quantities(h, &self.hard()))
    }

    fn limit_range_current(&self, lr: &LimitRange) -> bool {
        let want = self.container();
        let Some(spec) = &lr.spec else { return false };
        let [have] = spec.limits.as_slice() else { return false };
        let same = |a: &Option<BTreeMap<String, Quantity>>, b: &Option<BTreeMap<String, Quantity>>| match (a, b) {
            (Some(a), Some(b)) => same_quantities(a, b),
            (None, None) => true,
            _ => false,
        };
        have.type_ == want.type_
            && same(&have.default, &want.default)
            && same(&have.default_request, &want.default_request)
            && same(&have.max, &want.max)
            && have.min.is_none()
            && have.max_limit_request_ratio.is_none()
    }
}

fn same_quantities(a: &BTreeMap<String, Quantity>, b: &BTreeMap<String, Quantity>) -> bool {
    a.len() == b.len()
        && a.iter().all(|(k, v)| {
            b.get(k).is_some_and(|w| matches!((Amount::parse(&v.0), Amount::parse(&w.0)), (Ok(x), Ok(y)) if x == y))
        })
}

/// The Namespace as owner. `blockOwnerDeletion` stays unset: setting it needs `update` on
/// `namespaces/finalizers` where OwnerReferencesPermissionEnforcement runs (OpenShift).
fn owner(ns: &Namespace) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        name: ns.name_any(),
        uid: ns.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// Server-side applies the three objects in `ns`.
pub async fn apply(client: &kube::Client, ns: &Namespace, limits: &ProjectLimits) -> Result<(), kube::Error> {
    let name = ns.name_any();
    let pp = PatchParams::apply(labels::FIELD_MANAGER).force();
    let (quota, range, account) = (limits.resource_quota(ns), limits.limit_range(ns), limits.runner_account(ns));
    let quotas = Api::<ResourceQuota>::namespaced(client.clone(), &name);
    let ranges = Api::<LimitRange>::namespaced(client.clone(), &name);
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), &name);
    let (quota, range, account) = (Patch::Apply(&quota), Patch::Apply(&range), Patch::Apply(&account));
    tokio::try_join!(
        quotas.patch(QUOTA_NAME, &pp, &quota),
        ranges.patch(LIMIT_RANGE_NAME, &pp, &range),
        accounts.patch(SERVICE_ACCOUNT, &pp, &account),
    )?;
    tracing::info!(project = %name, "applied the project's ResourceQuota, LimitRange and runner ServiceAccount");
    Ok(())
}

/// The controller's view, shared with the session controller.
#[derive(Clone)]
pub struct Limits {
    client: kube::Client,
    limits: Arc<ProjectLimits>,
    namespaces: Store<Namespace>,
    quotas: Store<ResourceQuota>,
    ranges: Store<LimitRange>,
    accounts: Store<ServiceAccount>,
    /// Projects whose objects this replica applied a moment ago: the watch caches may not show
    /// them yet (a busy API server delays the watch), and applying again would be a wasted
    /// write, twice, for every new project.
    applied: Arc<std::sync::Mutex<HashMap<String, Instant>>>,
}

/// How long an apply is trusted while the caches catch up.
const SETTLE: Duration = Duration::from_secs(5);

impl Limits {
    fn just_applied(&self, ns: &str) -> bool {
        self.applied.lock().is_ok_and(|a| a.get(ns).is_some_and(|t| t.elapsed() < SETTLE))
    }

    async fn apply_once(&self, ns: &Namespace) -> Result<(), kube::Error> {
        apply(&self.client, ns, &self.limits).await?;
        if let Ok(mut a) = self.applied.lock() {
            a.retain(|_, t| t.elapsed() < SETTLE);
            a.insert(ns.name_any(), Instant::now());
        }
        Ok(())
    }

    /// Makes sure project `ns` has its ResourceQuota, LimitRange and runner ServiceAccount
    /// (from the watch caches; applied now when one is missing).
    pub async fn ensure(&self, ns: &str) -> Result<(), kube::Error> {
        let has_quota = self.quotas.get(&ObjectRef::new(QUOTA_NAME).within(ns)).is_some();
        let has_range = self.ranges.get(&ObjectRef::new(LIMIT_RANGE_NAME).within(ns)).is_some();
        let has_account = self.accounts.get(&ObjectRef::new(SERVICE_ACCOUNT).within(ns)).is_some();
        if (has_quota && has_range && has_account) || self.just_applied(ns) {
            return Ok(());
        }
        let namespace = match self.namespaces.get(&ObjectRef::new(ns)) {
            Some(n) if n.metadata.uid.is_some() => n,
            _ => Arc::new(Api::<Namespace>::all(self.client.clone()).get(ns).await?),
        };
        self.apply_once(&namespace).await
    }

    fn current(&self, ns: &str) -> bool {
        let q = self.quotas.get(&ObjectRef::new(QUOTA_NAME).within(ns));
        let r = self.ranges.get(&ObjectRef::new(LIMIT_RANGE_NAME).within(ns));
        let has_account = self.accounts.get(&ObjectRef::new(SERVICE_ACCOUNT).within(ns)).is_some();
        q.is_some_and(|q| self.limits.quota_current(&q))
            && r.is_some_and(|r| self.limits.limit_range_current(&r))
            && has_account
    }
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Limits>) -> Result<Action, ControllerError> {
    if ns.metadata.deletion_timestamp.is_some() || !events::views::is_project(&ns) {
        return Ok(Action::await_change());
    }
    let ready = [
        ctx.quotas.wait_until_ready().await,
        ctx.ranges.wait_until_ready().await,
        ctx.accounts.wait_until_ready().await,
    ];
    for ready in ready {
        ready.map_err(|_| ControllerError::CacheClosed)?;
    }
    if !ctx.current(&ns.name_any()) {
        if ctx.just_applied(&ns.name_any()) {
            // Our own apply, not yet in the caches: look again once they caught up.
            return Ok(Action::requeue(SETTLE));
        }
        ctx.apply_once(&ns).await?;
    }
    Ok(Action::await_change())
}

fn error_policy(ns: Arc<Namespace>, e: &ControllerError, _: Arc<Limits>) -> Action {
    tracing::warn!(project = %ns.name_any(), error = %e, "project limits reconcile failed");
    Action::requeue(ERROR_REQUEUE)
}

/// Starts the controller: a handle for the session controller and a future that runs until
/// `stop` is cancelled. Level-triggered on the managed namespaces and on the three objects (label
/// `app=ambient-project-limits`), so an edit or deletion is undone at once.
pub fn start(
    client: kube::Client,
    limits: Arc<ProjectLimits>,
    stop: CancellationToken,
) -> (Limits, impl Future<Output = ()>) {
    let ours = watcher::Config::default().labels(&format!("{}={APP_PROJECT_LIMITS}", labels::APP));
    let managed = watcher::Config::default().labels(labels::MANAGED_SELECTOR);
    // Only a namespace's name, uid, labels and deletion are read.
    let (namespaces, ns_events) = super::trimmed_watch(Api::<Namespace>::all(client.clone()), managed, |ns| {
        ns.metadata.managed_fields = None;
        ns.metadata.annotations = None;
        ns.spec = None;
        ns.status = None;
    });
    let no_fields = |m: &mut ObjectMeta| m.managed_fields = None;
    let (quotas, quota_events) =
        super::trimmed_watch(Api::<ResourceQuota>::all(client.clone()), ours.clone(), move |q| {
            no_fields(&mut q.metadata)
        });
    let (ranges, range_events) =
        super::trimmed_watch(Api::<LimitRange>::all(client.clone()), ours.clone(), move |r| no_fields(&mut r.metadata));
    // By name too: a project admin may create ServiceAccounts with any labels.
    let (accounts, account_events) = super::trimmed_watch(
        Api::<ServiceAccount>::all(client.clone()),
        ours.fields(&format!("metadata.name={SERVICE_ACCOUNT}")),
        move |a| no_fields(&mut a.metadata),
    );
    let handle = Limits {
        client,
        limits,
        namespaces: namespaces.clone(),
        quotas,
        ranges,
        accounts,
        applied: Default::default(),
    };
    let of_namespace = |o: Option<String>| o.map(|ns| ObjectRef::<Namespace>::new(&ns));
    let controller = Controller::for_stream(ns_events.applied_objects(), namespaces)
        .watches_stream(quota_events.touched_objects(), move |q: ResourceQuota| of_namespace(q.namespace()))
        .watches_stream(range_events.touched_objects(), move |r: LimitRange| of_namespace(r.namespace()))
        .watches_stream(account_events.touched_objects(), move |a: ServiceAccount| of_namespace(a.namespace()))
        .with_config(super::project_workers())
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, Arc::new(handle.clone()))
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "project limits controller");
            }
        });
    (handle, controller)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(s: &str) -> Amount {
        Amount::parse(s).unwrap()
    }

    fn limits() -> ProjectLimits {
        let quota = ["requests.cpu=20", "limits.memory=200Gi", "pods=100"]
            .iter()
            .map(|s| QuotaItem::parse(s).unwrap())
            .collect();
        ProjectLimits::new(
            quota,
            CpuMemory { cpu: amount("100m"), memory: amount("256Mi") },
            CpuMemory { cpu: amount("1"), memory: amount("2Gi") },
            disk(),
            &RunnerBounds::default(),
        )
        .unwrap()
    }

    fn disk() -> Disk {
        Disk { request: amount("1Gi"), limit: amount("10Gi"), max: amount("20Gi") }
    }

    fn ns() -> Namespace {
        Namespace {
            metadata: ObjectMeta { name: Some("p1".into()), uid: Some("u1".into()), ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn quota_items_parse() {
        assert_eq!(QuotaItem::parse("requests.cpu=20").unwrap().amount, amount("20"));
        assert_eq!(QuotaItem::parse(" count/jobs.batch = 50 ").unwrap().resource, "count/jobs.batch");
        for bad in ["requests.cpu", "=1", "requests.cpu=lots", "requests cpu=1", "pods=-1"] {
            assert!(QuotaItem::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_must_fit_the_bounds() {
        let l = limits();
        let small = CpuMemory { cpu: amount("1"), memory: amount("1Gi") };
        let big = CpuMemory { cpu: amount("5"), memory: amount("1Gi") };
        assert!(
            ProjectLimits::new(l.quota.clone(), big, big, disk(), &RunnerBounds::default()).is_err(),
            "limit above the runner bound"
        );
        assert!(
            ProjectLimits::new(l.quota.clone(), l.default_limit, small, disk(), &RunnerBounds::default()).is_err(),
            "request above limit"
        );
        assert!(ProjectLimits::new(Vec::new(), small, small, disk(), &RunnerBounds::default()).is_err(), "no quota");
        let bad_disk = Disk { request: amount("10Gi"), limit: amount("1Gi"), max: amount("20Gi") };
        assert!(
            ProjectLimits::new(l.quota.clone(), small, small, bad_disk, &RunnerBounds::default()).is_err(),
            "disk request above limit"
        );
    }

    #[test]
    fn objects_are_owned_by_the_namespace_and_compare_as_quantities() {
        let l = limits();
        let q = l.resource_quota(&ns());
        let o = &q.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (o.kind.as_str(), o.name.as_str(), o.uid.as_str(), o.block_owner_deletion),
            ("Namespace", "p1", "u1", None)
        );
        assert!(l.quota_current(&q));
        let lr = l.limit_range(&ns());
        let item = &lr.spec.as_ref().unwrap().limits[0];
        assert_eq!(item.max.as_ref().unwrap()["cpu"].0, "4");
        assert_eq!(item.max.as_ref().unwrap()["memory"].0, "8Gi");
        assert_eq!(item.default_request.as_ref().unwrap()["cpu"].0, "100m");
        assert_eq!(item.max.as_ref().unwrap()["ephemeral-storage"].0, "20Gi");
        assert_eq!(item.default.as_ref().unwrap()["ephemeral-storage"].0, "10Gi");
        assert!(l.limit_range_current(&lr));
        // The API server's spelling of the same values is current; another value is not.
        let mut respelled = q.clone();
        respelled
            .spec
            .as_mut()
            .unwrap()
            .hard
            .as_mut()
            .unwrap()
            .insert("requests.cpu".into(), Quantity("20000m".into()));
        assert!(l.quota_current(&respelled));
        let mut raised = q.clone();
        raised.spec.as_mut().unwrap().hard.as_mut().unwrap().insert("requests.cpu".into(), Quantity("21".into()));
        assert!(!l.quota_current(&raised));
        let mut dropped = q;
        dropped.spec.as_mut().unwrap().hard.as_mut().unwrap().remove("pods");
        assert!(!l.quota_current(&dropped));
        let mut loosened = lr;
        loosened.spec.as_mut().unwrap().limits[0].max = None;
        assert!(!l.limit_range_current(&loosened));
    }
}
