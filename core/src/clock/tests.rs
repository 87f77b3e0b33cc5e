use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use proptest::prelude::*;

use super::*;

fn region(s: &str) -> RegionId {
    RegionId::new(s).unwrap()
}

fn clock_strategy() -> impl Strategy<Value = VectorClock> {
    proptest::collection::btree_map(
        prop_oneof![Just("ap"), Just("eu"), Just("us"), Just("sa")].prop_map(region),
        0u64..5,
        0..4,
    )
    .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #[test]
    fn merge_is_commutative(a in clock_strategy(), b in clock_strategy()) {
        prop_assert_eq!(a.joined(&b), b.joined(&a));
    }

    #[test]
    fn merge_is_associative(a in clock_strategy(), b in clock_strategy(), c in clock_strategy()) {
        prop_assert_eq!(a.joined(&b).joined(&c), a.joined(&b.joined(&c)));
    }

    #[test]
    fn merge_is_idempotent(a in clock_strategy(), b in clock_strategy()) {
        prop_assert_eq!(a.joined(&a), a.clone());
        let ab = a.joined(&b);
        prop_assert_eq!(ab.joined(&b), ab);
    }

    /// `compare` agrees with merge: a <= b exactly when merging a into b changes nothing.
    #[test]
    fn compare_is_consistent_with_merge(a in clock_strategy(), b in clock_strategy()) {
        let ab = a.joined(&b);
        let a_le_b = ab == b;
        let b_le_a = ab == a;
        let expected = match (a_le_b, b_le_a) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (false, false) => Causality::Concurrent,
        };
        prop_assert_eq!(a.compare(&b), expected);
        // The join is never before either side.
        prop_assert!(matches!(ab.compare(&a), Causality::After | Causality::Equal));
    }

    #[test]
    fn increment_moves_strictly_after(a in clock_strategy(), r in prop_oneof![Just("eu"), Just("us")]) {
        let mut b = a.clone();
        b.increment(&region(r));
        prop_assert_eq!(b.compare(&a), Causality::After);
        prop_assert_eq!(a.compare(&b), Causality::Before);
    }

    #[test]
    fn encoding_round_trips_and_is_canonical(a in clock_strategy(), b in clock_strategy()) {
        prop_assert_eq!(VectorClock::decode(&a.encode()).unwrap(), a.clone());
        prop_assert_eq!(a == b, a.encode() == b.encode());
    }

    /// Whatever the wall clock does (stalls, jumps back, jumps forward), local stamps
    /// strictly increase, and so do stamps issued after observing remote ones.
    #[test]
    fn hlc_is_monotonic(steps in proptest::collection::vec((0u64..3_000_000, any::<bool>(), 0u64..400), 1..200)) {
        let wall = Arc::new(AtomicU64::new(1_000_000));
        let w = wall.clone();
        let hlc = Hlc::with_wall_clock(region("eu"), DEFAULT_MAX_DRIFT, Box::new(move || w.load(AtomicOrdering::SeqCst)));
        let mut last = hlc.now();
        for (wall_ms, observe, ahead) in steps {
            wall.store(wall_ms, AtomicOrdering::SeqCst);
            if observe {
                let remote = Timestamp { physical_ms: wall_ms + ahead, logical: 7, region: region("us") };
                hlc.update(&remote).unwrap();
                let next = hlc.now();
                prop_assert!(next > remote, "{next} after observed {remote}");
                prop_assert!(next > last);
                last = next;
            } else {
                let next = hlc.now();
                prop_assert!(next > last, "{next} > {last}");
                last = next;
            }
        }
    }
}

#[test]
fn compare_examples() {
    let (eu, us) = (region("eu"), region("us"));
    let a: VectorClock = [(eu.clone(), 2), (us.clone(), 1)].into_iter().collect();
    let b: VectorClock = [(eu.clone(), 1), (us.clone(), 2)].into_iter().collect();
    let c: VectorClock = [(eu.clone(), 2), (us.clone(), 2)].into_iter().collect();
    assert_eq!(a.compare(&b), Causality::Concurrent);
    assert_eq!(a.compare(&c), Causality::Before);
    assert_eq!(c.compare(&b), Causality::After);
    assert_eq!(
        VectorClock::new().compare(&VectorClock::new()),
        Causality::Equal
    );
    let zero: VectorClock = [(eu, 0)].into_iter().collect();
    assert_eq!(zero, VectorClock::new(), "zero counters are not stored");
}

#[test]
fn decode_rejects_non_canonical_bytes() {
    let (eu, us) = (region("eu"), region("us"));
    let good: VectorClock = [(eu, 1), (us, 3)].into_iter().collect();
    let bytes = good.encode();
    assert_eq!(
        VectorClock::decode(&bytes[..bytes.len() - 1]),
        Err(ClockDecodeError::Truncated)
    );
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        VectorClock::decode(&trailing),
        Err(ClockDecodeError::TrailingBytes)
    );
    // "us" before "eu": out of order.
    let swapped = [2, 2, b'u', b's', 3, 2, b'e', b'u', 1];
    assert_eq!(
        VectorClock::decode(&swapped),
        Err(ClockDecodeError::NotCanonical)
    );
    let zero = [1, 2, b'e', b'u', 0];
    assert_eq!(
        VectorClock::decode(&zero),
        Err(ClockDecodeError::NotCanonical)
    );
    let bad_id = [1, 2, b'E', b'U', 1];
    assert_eq!(
        VectorClock::decode(&bad_id),
        Err(ClockDecodeError::BadRegion)
    );
}

#[test]
fn hlc_orders_ties_by_region() {
    let a = Timestamp {
        physical_ms: 5,
        logical: 1,
        region: region("ap"),
    };
    let b = Timestamp {
        physical_ms: 5,
        logical: 1,
        region: region("eu"),
    };
    assert!(a < b);
}

#[test]
fn hlc_rejects_a_stamp_too_far_ahead() {
    let hlc = Hlc::with_wall_clock(
        region("eu"),
        Duration::from_millis(500),
        Box::new(|| 10_000),
    );
    let near = Timestamp {
        physical_ms: 10_500,
        logical: 0,
        region: region("us"),
    };
    hlc.update(&near).unwrap();
    let far = Timestamp {
        physical_ms: 10_501 + 500,
        logical: 0,
        region: region("us"),
    };
    let err = hlc.update(&far).unwrap_err();
    assert_eq!(err.ahead_ms, 1_001);
    assert!(
        err.to_string().contains("region us runs 1001 ms ahead"),
        "{err}"
    );
    // The refused stamp did not move the clock.
    assert!(hlc.now().physical_ms <= 10_500);
}

#[test]
fn region_ids_are_validated() {
    assert!(RegionId::new("eu-west_1").is_ok());
    assert_eq!(RegionId::new(""), Err(RegionIdError::Empty));
    assert!(matches!(
        RegionId::new("EU"),
        Err(RegionIdError::BadCharacter(_))
    ));
    assert!(matches!(
        RegionId::new("a/b"),
        Err(RegionIdError::BadCharacter(_))
    ));
    assert!(matches!(
        RegionId::new("x".repeat(33)),
        Err(RegionIdError::TooLong(_))
    ));
}
