use super::*;
use futures_util::FutureExt;

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn a_subscribe_and_an_unsubscribe_still_pending_cancel_out() {
    let plan = Plan::new(10);
    for _ in 0..1_000 {
        plan.request("churn".into(), true).expect("room");
        plan.request("churn".into(), false).expect("room");
    }
    let batch = plan.take();
    assert!(batch.subscribe.is_empty() && batch.unsubscribe.is_empty());
    assert_eq!(batch.ticket, 2_000);
    assert_eq!(plan.pending_subscribes(), 0);
}

#[test]
fn the_latest_desired_state_wins_against_what_the_link_has() {
    let plan = Plan::new(10);
    plan.request("a".into(), true).expect("room");
    plan.request("b".into(), true).expect("room");
    let first = plan.take();
    assert_eq!(sorted(first.subscribe), vec!["a", "b"]);
    // `a` leaves and comes back before the link looks: nothing to do.
    plan.request("a".into(), false).expect("room");
    plan.request("a".into(), true).expect("room");
    // `b` leaves for good; `c` churns and ends subscribed.
    plan.request("b".into(), false).expect("room");
    for subscribe in [true, false, true] {
        plan.request("c".into(), subscribe).expect("room");
    }
    let second = plan.take();
    assert_eq!(second.subscribe, vec!["c"]);
    assert_eq!(second.unsubscribe, vec!["b"]);
    assert_eq!(sorted(plan.wanted()), vec!["a", "c"]);
    assert_eq!(plan.wanted_len(), 2);
}

#[test]
fn pending_subscribes_are_bounded_and_unsubscribes_never_refused() {
    let plan = Plan::new(2);
    plan.request("a".into(), true).expect("room");
    plan.request("b".into(), true).expect("room");
    assert_eq!(plan.request("c".into(), true), Err(QueueFull { limit: 2 }));
    // A change to a channel already pending takes no new room.
    plan.request("a".into(), false).expect("cancels");
    plan.request("a".into(), true).expect("room again");
    assert_eq!(plan.pending_subscribes(), 2);
    // Once taken, there is room again; unsubscribes pass the bound.
    plan.take();
    plan.request("c".into(), true).expect("room");
    plan.request("d".into(), true).expect("room");
    plan.request("a".into(), false).expect("never refused");
    plan.request("b".into(), false).expect("never refused");
    let batch = plan.take();
    assert_eq!(sorted(batch.unsubscribe), vec!["a", "b"]);
    assert_eq!(sorted(batch.subscribe), vec!["c", "d"]);
}

#[tokio::test]
async fn a_reader_is_confirmed_once_its_change_is_applied() {
    let plan = Plan::new(10);
    plan.request("a".into(), true).expect("room");
    let ticket = plan.ticket();
    assert!(plan.confirmed(ticket).now_or_never().is_none());
    let batch = plan.take();
    // Changes made after the batch was taken are not covered by it.
    plan.request("b".into(), true).expect("room");
    let later = plan.ticket();
    plan.applied(batch.ticket);
    assert!(plan.confirmed(ticket).now_or_never().is_some());
    assert!(plan.confirmed(later).now_or_never().is_none());
    // Older numbers never move it back.
    plan.applied(0);
    assert!(plan.confirmed(ticket).now_or_never().is_some());
}

#[tokio::test]
async fn a_change_wakes_the_link() {
    let plan = Plan::new(10);
    plan.request("a".into(), true).expect("room");
    // The permit is stored: the link finds it even if it was not waiting.
    assert!(plan.changed().now_or_never().is_some());
    assert!(plan.changed().now_or_never().is_none());
}

#[test]
fn a_batch_given_back_is_pending_again_unless_superseded() {
    let plan = Plan::new(10);
    plan.request("a".into(), true).expect("queued");
    plan.request("b".into(), true).expect("queued");
    let batch = plan.take();
    assert_eq!(plan.pending_subscribes(), 0);
    // Meanwhile "b" was dropped again: that newer change stands.
    plan.request("b".into(), false).expect("queued");
    plan.untake(batch);
    let again = plan.take();
    assert_eq!(sorted(again.subscribe), vec!["a".to_string()]);
    assert_eq!(sorted(again.unsubscribe), vec!["b".to_string()]);
    assert_eq!(sorted(plan.wanted()), vec!["a".to_string()]);
}
