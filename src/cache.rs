//! One memory budget for every per-backend cache of udm (`udm.cache_size`).
//!
//! Each cache is an [`Lru`] in a `thread_local!`; every entry carries an estimate of the memory
//! it holds (Rust structures, and the kept plan's memory contexts where it holds a plan). When
//! the caches together hold more than their share of the budget, the entries used least
//! recently, across all caches, are dropped (a tenant used again is rebuilt transparently: its
//! definitions read again, its statements planned again).
//!
//! PostgreSQL's own caches grow too: each tenant table a backend touches leaves relation and
//! catalog cache entries, which PostgreSQL never drops by itself. udm counts what the tenants it
//! loads add there (an estimate per tenant and entity, measured on this build) and, past the
//! other share of the budget, resets this backend's catalog caches as PostgreSQL does after a
//! cache-invalidation overflow (`InvalidateSystemCaches`): everything is read again on demand.
//!
//! Hits cost a hash lookup and a counter; the order of use is kept lazily (an entry's place in
//! the eviction order is corrected only when it reaches the front), so a hit never allocates.

use pgrx::prelude::*;
use std::borrow::Borrow;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::thread::LocalKey;

/// The share of the budget udm's own entries may hold; PostgreSQL's catalog caches get the rest.
const OWN_SHARE: f64 = 0.6;
/// What PostgreSQL's relation and catalog caches keep per tenant and per entity a backend
/// touches (measured with `pg_backend_memory_contexts` on PostgreSQL 15: about 40 kB for a tenant
/// of two entities, its catalog and audit tables and their indexes).
const PG_PER_TENANT: usize = 12 * 1024;
const PG_PER_ENTITY: usize = 14 * 1024;
/// Overhead of one entry beyond what its estimate says (keys, hash slots, order).
const ENTRY_OVERHEAD: usize = 96;

struct Slot<V> {
    value: V,
    tick: u64,
    bytes: usize,
    /// The tenant the entry was built for (its catalog table's oid), or 0 when it was not built
    /// for one tenant alone.
    scope: u32,
}

/// A cache whose entries count against the budget.
pub struct Lru<K, V> {
    name: &'static str,
    map: HashMap<K, Slot<V>>,
    /// Ticks of use → key; an entry's tick in `map` may be newer than its place here.
    order: BTreeMap<u64, K>,
    bytes: usize,
    generation: u64,
    /// Whether the entries are built on tenants' definitions (the cache is synced with their
    /// generation, or holds entries of one tenant): a tenant's invalidation drops its entries
    /// and those of no single tenant.
    bound: bool,
    registered: bool,
    hits: u64,
    misses: u64,
    evictions: u64,
}

pub type Cache<K, V> = RefCell<Lru<K, V>>;

impl<K: Eq + Hash + Clone, V: Clone> Lru<K, V> {
    pub fn new(name: &'static str) -> Cache<K, V> {
        RefCell::new(Lru {
            name,
            map: HashMap::new(),
            order: BTreeMap::new(),
            bytes: 0,
            generation: u64::MAX,
            bound: false,
            registered: false,
            hits: 0,
            misses: 0,
            evictions: 0,
        })
    }

    fn get<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.map.get_mut(k) {
            Some(s) => {
                s.tick = tick();
                self.hits += 1;
                Some(s.value.clone())
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    fn insert(&mut self, k: K, v: V, bytes: usize, scope: u32) {
        let bytes = bytes + ENTRY_OVERHEAD;
        let t = tick();
        self.bound |= scope != 0;
        if let Some(old) = self.map.insert(
            k.clone(),
            Slot {
                value: v,
                tick: t,
                bytes,
                scope,
            },
        ) {
            self.order.remove(&old.tick);
            self.account(-(old.bytes as isize));
        }
        self.order.insert(t, k);
        self.account(bytes as isize);
    }

    fn account(&mut self, delta: isize) {
        self.bytes = (self.bytes as isize + delta).max(0) as usize;
        TOTAL.with(|t| t.set((t.get() as isize + delta).max(0) as usize));
    }

    fn clear(&mut self) {
        let b = self.bytes as isize;
        self.map.clear();
        self.order.clear();
        self.account(-b);
    }

    /// Drops the entries of the tenants `scopes` and those of no single tenant; a cache not built
    /// on definitions keeps all.
    fn drop_scopes(&mut self, scopes: &[u32]) {
        if !self.bound {
            return;
        }
        let before = self.bytes;
        let mut freed = 0usize;
        self.map.retain(|_, s| {
            let keep = s.scope != 0 && !scopes.contains(&s.scope);
            if !keep {
                freed += s.bytes;
            }
            keep
        });
        let map = &self.map;
        self.order.retain(|_, k| map.contains_key(k));
        self.account(-(freed.min(before) as isize));
    }

    /// The tick of the entry used least recently (fixing up entries used since they were placed).
    fn oldest(&mut self) -> Option<u64> {
        loop {
            let (&t, _) = self.order.iter().next()?;
            let k = self.order.remove(&t).expect("first key");
            match self.map.get(&k) {
                Some(s) if s.tick == t => {
                    self.order.insert(t, k);
                    return Some(t);
                }
                Some(s) => {
                    let now = s.tick;
                    self.order.insert(now, k);
                }
                None => {}
            }
        }
    }

    fn evict_oldest(&mut self) -> bool {
        let Some(t) = self.oldest() else {
            return false;
        };
        let k = self.order.remove(&t).expect("oldest key");
        if let Some(s) = self.map.remove(&k) {
            self.account(-(s.bytes as isize));
            self.evictions += 1;
        }
        true
    }
}

/// What the budget needs of a cache, whatever its key and value types.
trait Member {
    fn oldest(&'static self) -> Option<u64>;
    fn evict_oldest(&'static self) -> bool;
    fn stats(&'static self) -> Option<Stats>;
    /// False when the cache is in use and could not drop them.
    fn drop_scopes(&'static self, scopes: &[u32]) -> bool;
}

impl<K: Eq + Hash + Clone + 'static, V: Clone + 'static> Member for LocalKey<Cache<K, V>> {
    fn oldest(&'static self) -> Option<u64> {
        self.with(|c| c.try_borrow_mut().ok().and_then(|mut c| c.oldest()))
    }
    fn evict_oldest(&'static self) -> bool {
        self.with(|c| {
            c.try_borrow_mut()
                .map(|mut c| c.evict_oldest())
                .unwrap_or(false)
        })
    }
    fn drop_scopes(&'static self, scopes: &[u32]) -> bool {
        self.with(|c| {
            c.try_borrow_mut()
                .map(|mut c| c.drop_scopes(scopes))
                .is_ok()
        })
    }
    fn stats(&'static self) -> Option<Stats> {
        self.with(|c| {
            c.try_borrow().ok().map(|c| Stats {
                name: c.name,
                entries: c.map.len(),
                bytes: c.bytes,
                hits: c.hits,
                misses: c.misses,
                evictions: c.evictions,
            })
        })
    }
}

#[derive(Debug, Clone)]
pub struct Stats {
    pub name: &'static str,
    pub entries: usize,
    pub bytes: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

thread_local! {
    static TICK: Cell<u64> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
    static MEMBERS: RefCell<Vec<&'static dyn Member>> = const { RefCell::new(Vec::new()) };
    /// What the tenants loaded since the last reset are estimated to hold in PostgreSQL's caches.
    static PG_BYTES: Cell<usize> = const { Cell::new(0) };
    static PG_TENANTS: Cell<usize> = const { Cell::new(0) };
    static PG_RESETS: Cell<u64> = const { Cell::new(0) };
    /// Set while udm resets PostgreSQL's caches itself: its own entries stay.
    static RESETTING: Cell<bool> = const { Cell::new(false) };
    /// The backend's heap when udm first cached something (what it holds without tenants).
    static BASELINE: Cell<usize> = const { Cell::new(0) };
    static PUTS: Cell<u32> = const { Cell::new(0) };
}

/// How many insertions apart the backend's real heap is compared with the budget.
const HEAP_CHECK_EVERY: u32 = 4;

fn tick() -> u64 {
    TICK.with(|t| {
        let n = t.get() + 1;
        t.set(n);
        n
    })
}

/// The budget in bytes (`udm.cache_size`).
pub fn budget() -> usize {
    (crate::guc::CACHE_SIZE_KB.get().max(1024) as usize) * 1024
}

fn register<K: Eq + Hash + Clone + 'static, V: Clone + 'static>(c: &'static LocalKey<Cache<K, V>>) {
    let new = c.with(|x| {
        let mut x = x.borrow_mut();
        !std::mem::replace(&mut x.registered, true)
    });
    if new {
        MEMBERS.with(|m| m.borrow_mut().push(c));
    }
}

/// The cached value for `k`, if there is one (counted as a hit or a miss).
pub fn get<K, V, Q>(c: &'static LocalKey<Cache<K, V>>, k: &Q) -> Option<V>
where
    K: Eq + Hash + Clone + Borrow<Q> + 'static,
    V: Clone + 'static,
    Q: Hash + Eq + ?Sized,
{
    c.with(|x| x.borrow_mut().get(k))
}

/// Caches `v` for `k`, holding about `bytes`; then keeps all caches within the budget.
pub fn put<K: Eq + Hash + Clone + 'static, V: Clone + 'static>(
    c: &'static LocalKey<Cache<K, V>>,
    k: K,
    v: V,
    bytes: usize,
) {
    put_scoped(c, 0, k, v, bytes)
}

pub fn clear<K: Eq + Hash + Clone + 'static, V: Clone + 'static>(
    c: &'static LocalKey<Cache<K, V>>,
) {
    c.with(|x| x.borrow_mut().clear())
}

/// Caches `v` for `k` as an entry built for one tenant alone (`scope`: its catalog table's
/// oid, `Tenant::scope`): when that tenant's definitions change, [`drop_scopes`] drops it, and
/// the entries of other tenants stay.
pub fn put_scoped<K: Eq + Hash + Clone + 'static, V: Clone + 'static>(
    c: &'static LocalKey<Cache<K, V>>,
    scope: u32,
    k: K,
    v: V,
    bytes: usize,
) {
    register(c);
    c.with(|x| x.borrow_mut().insert(k, v, bytes, scope));
    enforce();
}

/// Drops, from every cache built on definitions, the entries of the tenants `scopes` and those
/// of no single tenant. False when a cache could not be reached (then the caller must drop
/// everything).
pub fn drop_scopes(scopes: &[u32]) -> bool {
    let members: Vec<&'static dyn Member> = MEMBERS.with(|m| m.borrow().clone());
    let mut all = true;
    for m in members {
        all &= m.drop_scopes(scopes);
    }
    all
}

/// Empties the cache when `generation` (of the definitions its entries were built on) moved.
pub fn sync<K: Eq + Hash + Clone + 'static, V: Clone + 'static>(
    c: &'static LocalKey<Cache<K, V>>,
    generation: u64,
) {
    c.with(|x| {
        let mut x = x.borrow_mut();
        x.bound = true;
        if x.generation != generation {
            x.clear();
            x.generation = generation;
        }
    })
}

/// Drops the entries used least recently, across caches, until udm's share of the budget holds;
/// then every few insertions compares the backend's heap with the budget.
fn enforce() {
    let limit = (budget() as f64 * OWN_SHARE) as usize;
    if TOTAL.with(|t| t.get()) > limit {
        // below the limit by a margin, so that a full cache does not evict on every insert
        evict_to(limit - limit / 8);
    }
    check_heap();
}

/// The estimates miss memory the backend really holds for its tenants: what PostgreSQL keeps
/// for reuse after its caches are reset or its plans freed, the allocator's own overhead. So
/// every few insertions the heap itself (`heap_bytes`) is compared with a baseline (its size when
/// udm first cached something, see `udm_core::budget::heap_check`) plus the budget; beyond it,
/// more of udm's entries go (their memory returns to the allocator; resetting PostgreSQL's caches
/// would not return theirs, it keeps it for reuse).
fn check_heap() {
    let n = PUTS.with(|p| {
        let n = p.get().wrapping_add(1);
        p.set(n);
        n
    });
    if n % HEAP_CHECK_EVERY != 1 {
        return;
    }
    let check = udm_core::budget::heap_check(
        heap_bytes(),
        BASELINE.with(|b| b.get()),
        budget(),
        TOTAL.with(|t| t.get()),
    );
    BASELINE.with(|b| b.set(check.baseline));
    if let Some(target) = check.evict_to {
        evict_to(target);
    }
}

/// Evicts the entries used least recently, across caches, until they hold at most `target`.
fn evict_to(target: usize) {
    let members: Vec<&'static dyn Member> = MEMBERS.with(|m| m.borrow().clone());
    while TOTAL.with(|t| t.get()) > target {
        let victim = members
            .iter()
            .filter_map(|m| m.oldest().map(|t| (t, *m)))
            .min_by_key(|(t, _)| *t);
        match victim {
            Some((_, m)) => {
                if !m.evict_oldest() {
                    break;
                }
            }
            None => break,
        }
    }
}

/// A tenant's definitions were loaded into this backend (`entities` of them): PostgreSQL's caches
/// will hold its tables' entries. Past PostgreSQL's share of the budget, they are reset.
pub fn tenant_loaded(entities: usize) {
    let add = PG_PER_TENANT + entities * PG_PER_ENTITY;
    let now = PG_BYTES.with(|b| {
        let n = b.get() + add;
        b.set(n);
        n
    });
    PG_TENANTS.with(|t| t.set(t.get() + 1));
    let limit = (budget() as f64 * (1.0 - OWN_SHARE)) as usize;
    if now > limit {
        reset_postgres_caches();
    }
}

/// Resets this backend's relation and catalog caches (PostgreSQL rebuilds what it uses next, as
/// after an invalidation overflow); udm's own entries stay, their plans are re-planned on use.
fn reset_postgres_caches() {
    RESETTING.with(|r| r.set(true));
    // SAFETY: what PostgreSQL runs itself when its invalidation queue overflowed, at any point
    // where invalidations are accepted: open relations are rebuilt, others dropped
    unsafe { pg_sys::InvalidateSystemCaches() };
    RESETTING.with(|r| r.set(false));
    PG_BYTES.with(|b| b.set(0));
    PG_TENANTS.with(|t| t.set(0));
    PG_RESETS.with(|r| r.set(r.get() + 1));
}

/// Whether the invalidation being handled is udm's own reset of PostgreSQL's caches.
pub fn resetting() -> bool {
    RESETTING.with(|r| r.get())
}

/// One row per cache, then PostgreSQL's caches as udm counts them, then the whole, then the
/// backend's whole heap (what the budget is meant to bound, with everything else it holds).
pub fn stats() -> Vec<Stats> {
    let members: Vec<&'static dyn Member> = MEMBERS.with(|m| m.borrow().clone());
    let mut out: Vec<Stats> = members.iter().filter_map(|m| m.stats()).collect();
    out.sort_by_key(|s| s.name);
    let own: usize = out.iter().map(|s| s.bytes).sum();
    out.push(Stats {
        name: "postgres catalog caches",
        entries: PG_TENANTS.with(|t| t.get()),
        bytes: PG_BYTES.with(|b| b.get()),
        hits: 0,
        misses: 0,
        evictions: PG_RESETS.with(|r| r.get()),
    });
    let heap = heap_bytes();
    let all = Stats {
        name: "total",
        entries: out.iter().map(|s| s.entries).sum(),
        bytes: own + PG_BYTES.with(|b| b.get()),
        hits: out.iter().map(|s| s.hits).sum(),
        misses: out.iter().map(|s| s.misses).sum(),
        evictions: out.iter().map(|s| s.evictions).sum(),
    };
    out.push(all);
    out.push(Stats {
        name: "backend heap",
        entries: 0,
        bytes: heap,
        hits: 0,
        misses: 0,
        evictions: 0,
    });
    out
}

/// Memory this backend holds from the C heap (PostgreSQL's memory contexts and Rust's
/// allocations alike): glibc's `mallinfo2`, in use plus mapped.
pub fn heap_bytes() -> usize {
    #[repr(C)]
    struct Mallinfo2 {
        arena: usize,
        ordblks: usize,
        smblks: usize,
        hblks: usize,
        hblkhd: usize,
        usmblks: usize,
        fsmblks: usize,
        uordblks: usize,
        fordblks: usize,
        keepcost: usize,
    }
    unsafe extern "C" {
        fn mallinfo2() -> Mallinfo2;
    }
    // SAFETY: glibc (Debian's PostgreSQL runs on it); reads the allocator's counters
    let m = unsafe { mallinfo2() };
    m.uordblks + m.hblkhd
}

/// Memory a kept plan holds: its plan sources' contexts (the parsed and analysed queries) and,
/// once made, the generic plan's.
pub fn plan_bytes(plan: pg_sys::SPIPlanPtr) -> usize {
    unsafe {
        let list = pg_sys::SPI_plan_get_plan_sources(plan);
        if list.is_null() {
            return 0;
        }
        let mut total = 0usize;
        for i in 0..(*list).length as usize {
            let ps = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::CachedPlanSource;
            if ps.is_null() {
                continue;
            }
            if !(*ps).context.is_null() {
                total += pg_sys::MemoryContextMemAllocated((*ps).context, true);
            }
            let gp = (*ps).gplan;
            if !gp.is_null() && !(*gp).context.is_null() {
                total += pg_sys::MemoryContextMemAllocated((*gp).context, true);
            } else {
                // the generic plan comes with the first executions: about the query's size
                total += total / 2;
            }
        }
        total
    }
}

/// Estimated memory of a kept plan for `sql` where the plan itself cannot be measured.
pub fn plan_estimate(sql: &str) -> usize {
    20 * 1024 + 8 * sql.len()
}

/// This backend's caches: entries, bytes, hits, misses and evictions of each of udm's caches, of
/// PostgreSQL's catalog caches as udm counts them for its tenants (entries: tenants loaded since
/// the last reset; evictions: resets), the total against `udm.cache_size` (`budget_bytes`), and
/// the backend's whole heap (`backend heap`: memory contexts and Rust's allocations).
#[allow(clippy::type_complexity)] // pgrx reads the column names from this signature
#[pg_extern(volatile, parallel_safe)]
fn udm_cache_stats() -> TableIterator<
    'static,
    (
        name!(cache, String),
        name!(entries, i64),
        name!(bytes, i64),
        name!(hits, i64),
        name!(misses, i64),
        name!(evictions, i64),
        name!(budget_bytes, i64),
    ),
> {
    let budget = budget() as i64;
    TableIterator::new(stats().into_iter().map(move |s| {
        (
            s.name.to_string(),
            s.entries as i64,
            s.bytes as i64,
            s.hits as i64,
            s.misses as i64,
            s.evictions as i64,
            budget,
        )
    }))
}
