//! The bench's arithmetic: medians, the alternation's order, each sampling step set against the
//! faster peer layout, and civil dates.

use super::*;

#[test]
fn median_of_odd_and_even_counts() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
}

#[test]
fn alternation_swaps_the_order_every_round() {
    let log = std::cell::RefCell::new(Vec::new());
    let (a, b, ratios) = alternate(
        1,
        3,
        || {
            log.borrow_mut().push('a');
            Ok(2.0)
        },
        || {
            log.borrow_mut().push('b');
            Ok(4.0)
        },
    )
    .unwrap();
    assert_eq!(log.into_inner().iter().collect::<String>(), "ababbaab");
    assert_eq!((a.len(), b.len()), (3, 3));
    assert_eq!(ratios, [0.5; 3]);
}

#[test]
fn each_sampling_step_is_set_against_the_faster_peer_layout() {
    let record = |step: &str, peer_layout: &str, ratio: f64| {
        json!({"case": "ddpm_unet", "step": step, "batch": 16, "peer": "same function",
            "layout": "channels_last", "peer_layout": peer_layout, "ratio_median": ratio})
    };
    let best = vs_best_layout(&[
        record("ddim_step", "nchw", 0.90),
        record("ddim_step", "channels_last", 0.93),
        record("plms_step", "channels_last", 0.91),
        record("plms_step", "nchw", 0.94),
        record("train_step", "nchw", 1.2),
    ]);
    assert_eq!(best.len(), 2);
    assert_eq!(best[0]["step"], "ddim_step");
    assert_eq!(best[0]["peer_layout"], "channels_last");
    assert_eq!(best[0]["ratio_median"], 0.93);
    assert_eq!(best[1]["peer_layout"], "nchw");
    assert_eq!(best[1]["ratio_median"], 0.94);
}

#[test]
fn dates_are_civil() {
    let d = today();
    assert_eq!(d.len(), 10);
    assert!(d.starts_with("20"), "{d}");
}
