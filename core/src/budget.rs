//! The per-backend cache budget's check of the whole heap (`udm.cache_size`): udm's estimates of
//! its own entries miss memory the backend really holds for them (what PostgreSQL keeps for reuse,
//! the allocator's overhead), so the heap itself is compared with a baseline plus the budget.

/// What a heap check decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapCheck {
    /// Evict udm's entries (least recently used first) until they hold at most this many bytes.
    pub evict_to: Option<usize>,
    /// The baseline from now on.
    pub baseline: usize,
}

/// The check of a heap of `heap` bytes against `baseline` (0: none yet) plus `budget`, while
/// udm's entries hold `total` bytes (by its estimates).
///
/// * The baseline follows the heap down: what a statement held is given back after it.
/// * Over the allowance, udm's entries go until the excess (and an eighth of the budget more)
///   would be gone.
/// * When the excess is more than all udm holds, it is mostly not udm's: a statement's working
///   memory (a large UPDATE's pending trigger events, its parameters), which evicting cannot give
///   back. Evicting again at every check would have each row rebuild what it uses (a
///   100,000-row re-encryption ran 6 times slower so); the heap as it is becomes the baseline.
pub fn heap_check(heap: usize, baseline: usize, budget: usize, total: usize) -> HeapCheck {
    let base = if baseline == 0 || heap < baseline {
        heap
    } else {
        baseline
    };
    let allowed = base.saturating_add(budget);
    if heap <= allowed {
        return HeapCheck {
            evict_to: None,
            baseline: base,
        };
    }
    let over = heap - allowed + budget / 8;
    HeapCheck {
        evict_to: Some(total.saturating_sub(over)),
        baseline: if over > total { heap } else { base },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1 << 20;

    #[test]
    fn within_the_allowance_nothing_goes_and_the_first_heap_is_the_baseline() {
        assert_eq!(
            heap_check(5 * MB, 0, 64 * MB, 2 * MB),
            HeapCheck {
                evict_to: None,
                baseline: 5 * MB
            }
        );
        assert_eq!(heap_check(60 * MB, 5 * MB, 64 * MB, 40 * MB).evict_to, None);
    }

    #[test]
    fn over_it_by_udm_s_own_entries_they_go_and_the_baseline_stays() {
        // 80 MB of heap on a 5 MB baseline and a 64 MB budget: 11 MB over (+8 MB margin)
        let c = heap_check(80 * MB, 5 * MB, 64 * MB, 50 * MB);
        assert_eq!(c.evict_to, Some(50 * MB - 19 * MB));
        assert_eq!(c.baseline, 5 * MB);
    }

    #[test]
    fn over_it_by_a_statement_s_memory_one_eviction_and_the_heap_is_the_new_baseline() {
        // a statement holds 150 MB; udm's entries are 1 MB: evicting cannot help
        let c = heap_check(155 * MB, 5 * MB, 64 * MB, MB);
        assert_eq!(c.evict_to, Some(0));
        assert_eq!(c.baseline, 155 * MB);
        // the next checks, while the statement runs on, evict nothing
        assert_eq!(
            heap_check(157 * MB, c.baseline, 64 * MB, MB / 2).evict_to,
            None
        );
        // after it, the baseline follows the heap down again
        assert_eq!(heap_check(6 * MB, c.baseline, 64 * MB, MB).baseline, 6 * MB);
    }
}
