//! The sole replica (redb, memory): it leads from start to stop, unfenced, and reports itself alone.

use control_plane::ha::{self, LeaderWork, Replica, Timing};
use futures::FutureExt;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

#[tokio::test]
async fn a_memory_store_replica_leads_at_once_and_alone() {
    let replica = Replica { name: "solo".into(), url: "http://127.0.0.1:7070".into() };
    let opened = ha::open("memory:", replica, Timing::default()).await.expect("open");
    assert!(opened.status.is_leader());
    let members = opened.status.members().await.expect("members");
    assert_eq!(members.len(), 1);
    assert_eq!(
        (members[0].name.as_str(), members[0].url.as_str(), members[0].leader),
        ("solo", "http://127.0.0.1:7070", true)
    );
    assert!(opened.status.metrics_text().contains("berth_leader 1\n"));

    let (tx, mut rx) = mpsc::unbounded_channel();
    let work: LeaderWork = Arc::new(move |store, stop| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(store.revision().await.is_ok());
            stop.await;
            let _ = tx.send(false);
        }
        .boxed()
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(opened.election.run(work, async move {
        let _ = stopped.await;
    }));
    assert_eq!(rx.recv().await, Some(true), "the work runs over the store at once");
    stop.send(()).expect("stop");
    assert_eq!(rx.recv().await, Some(false), "and stops with the shutdown");
    running.await.expect("election returns");
}
