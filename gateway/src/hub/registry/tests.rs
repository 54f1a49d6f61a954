use super::*;
use std::sync::mpsc as std_mpsc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

fn subscriber(id: u64) -> Subscriber {
    let (queue, _rx) = mpsc::channel(1);
    Subscriber::new(SessionId(id), queue, Arc::default())
}

fn ids(readers: &Readers) -> Vec<u64> {
    let mut ids: Vec<u64> = readers.iter().map(|s| s.id.0).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn first_and_last_reader_run_the_callbacks() {
    let r = Registry::default();
    let events = Mutex::new(Vec::new());
    let push = |e: &'static str| events.lock().expect("lock").push(e);
    r.insert("chat", subscriber(1), || push("first"));
    r.insert("chat", subscriber(2), || push("first"));
    r.remove("chat", SessionId(1), || push("last"));
    r.remove("chat", SessionId(3), || push("last")); // unknown socket
    r.remove("chat", SessionId(2), || push("last"));
    r.remove("gone", SessionId(2), || push("last")); // unknown channel
    assert_eq!(*events.lock().expect("lock"), vec!["first", "last"]);
    assert!(r.readers("chat").is_empty());
}

#[test]
fn readers_are_a_snapshot_kept_until_the_channel_changes() {
    let r = Registry::default();
    for id in 1..=5 {
        r.insert("a", subscriber(id), || {});
    }
    r.insert("b", subscriber(9), || {});
    let first = r.readers("a");
    assert_eq!(ids(&first), vec![1, 2, 3, 4, 5]);
    assert!(
        Arc::ptr_eq(&first, &r.readers("a")),
        "unchanged: the same snapshot"
    );
    r.remove("a", SessionId(2), || {});
    let second = r.readers("a");
    assert_eq!(ids(&second), vec![1, 3, 4, 5]);
    assert_eq!(ids(&first), vec![1, 2, 3, 4, 5], "a snapshot never changes");
    // Removal from the middle keeps the index right for later removals.
    r.remove("a", SessionId(5), || {});
    r.remove("a", SessionId(1), || {});
    assert_eq!(ids(&r.readers("a")), vec![3, 4]);
    assert_eq!(ids(&r.readers("b")), vec![9]);
}

#[test]
fn a_held_snapshot_does_not_block_joins_and_leaves() {
    let r = Registry::default();
    r.insert("a", subscriber(1), || {});
    let held = r.readers("a"); // as fan-out holds it while sending
    r.insert("a", subscriber(2), || {});
    r.remove("a", SessionId(1), || {});
    assert_eq!(ids(&held), vec![1]);
    assert_eq!(ids(&r.readers("a")), vec![2]);
}

/// The race of the security review: the last reader leaves while the
/// next first reader joins. The leaver's callback is held open until the
/// joiner has had every chance to overtake it; the bus must still see
/// "unsubscribe" before "subscribe".
#[test]
fn the_bus_sees_unsubscribe_before_the_next_subscribe() {
    let r = Arc::new(Registry::default());
    r.insert("c", subscriber(1), || {});
    let ops = Arc::new(Mutex::new(Vec::new()));
    let (in_callback_tx, in_callback_rx) = std_mpsc::channel();
    let (release_tx, release_rx) = std_mpsc::channel::<()>();
    let leaver = {
        let (r, ops) = (r.clone(), ops.clone());
        std::thread::spawn(move || {
            r.remove("c", SessionId(1), || {
                in_callback_tx.send(()).expect("signal");
                // Held open until the joiner finished, or long enough that
                // it would have.
                let _ = release_rx.recv_timeout(Duration::from_millis(500));
                ops.lock().expect("lock").push("unsubscribe");
            })
        })
    };
    in_callback_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the leaver reached its callback");
    let (joined_tx, joined_rx) = std_mpsc::channel();
    let joiner = {
        let (r, ops) = (r.clone(), ops.clone());
        std::thread::spawn(move || {
            r.insert("c", subscriber(2), || {
                ops.lock().expect("lock").push("subscribe")
            });
            let _ = joined_tx.send(());
        })
    };
    // If the joiner can complete while the leaver is in its callback, let
    // the leaver go only afterwards: the wrong order would be recorded.
    let _ = joined_rx.recv_timeout(Duration::from_millis(400));
    let _ = release_tx.send(());
    leaver.join().expect("leaver");
    joiner.join().expect("joiner");
    assert_eq!(*ops.lock().expect("lock"), vec!["unsubscribe", "subscribe"]);
    assert_eq!(ids(&r.readers("c")), vec![2]);
}

/// Many sockets joining and leaving few channels at once: replaying the
/// callbacks in the order they ran gives exactly the channels that have
/// readers.
#[test]
fn under_churn_the_callbacks_track_the_registry() {
    let r = Arc::new(Registry::default());
    let log = Arc::new(Mutex::new(Vec::<(String, bool)>::new()));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (r, log) = (r.clone(), log.clone());
            std::thread::spawn(move || {
                for i in 0..2_000u64 {
                    let channel = format!("ch{}", (i * 7 + t) % 5);
                    let id = SessionId(t * 1_000_000 + i);
                    let l = log.clone();
                    let name = channel.clone();
                    r.insert(&channel, subscriber(id.0), move || {
                        l.lock().expect("lock").push((name, true))
                    });
                    if i % 3 != 0 {
                        let l = log.clone();
                        let name = channel.clone();
                        r.remove(&channel, id, move || {
                            l.lock().expect("lock").push((name, false))
                        });
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let mut subscribed = std::collections::HashSet::new();
    for (channel, on) in log.lock().expect("lock").iter() {
        if *on {
            assert!(
                subscribed.insert(channel.clone()),
                "subscribed twice: {channel}"
            );
        } else {
            assert!(
                subscribed.remove(channel),
                "unsubscribed while not subscribed: {channel}"
            );
        }
    }
    for c in 0..5 {
        let channel = format!("ch{c}");
        assert_eq!(
            subscribed.contains(&channel),
            !r.readers(&channel).is_empty(),
            "{channel}"
        );
    }
}

#[test]
fn a_refused_first_reader_is_not_added_and_the_next_one_asks_again() {
    let r = Registry::default();
    let asked = Mutex::new(0);
    let refuse = || {
        *asked.lock().expect("lock") += 1;
        Err("queue full")
    };
    assert_eq!(
        r.try_insert("chat", subscriber(1), refuse),
        Err("queue full")
    );
    assert!(r.readers("chat").is_empty(), "nothing registered");
    // No reader, so the next one is the first again: the bus is asked.
    assert_eq!(
        r.try_insert("chat", subscriber(2), refuse),
        Err("queue full")
    );
    assert_eq!(*asked.lock().expect("lock"), 2);
    r.try_insert("chat", subscriber(3), || Ok::<(), &str>(()))
        .expect("accepted");
    // Not the first any more: the bus is not asked, so it cannot refuse.
    r.try_insert("chat", subscriber(4), refuse)
        .expect("joins the existing subscription");
    assert_eq!(ids(&r.readers("chat")), vec![3, 4]);
    assert_eq!(*asked.lock().expect("lock"), 2);
}
