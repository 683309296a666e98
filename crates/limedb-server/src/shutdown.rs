//! Shutdown signalling shared by every listener and background task of a node.
//!
//! A [`ShutdownTrigger`] is held by whoever decides to stop (the binary's signal handler, a test,
//! `limedb dev`); every server loop holds a cloned [`Shutdown`] and stops accepting work once it
//! fires. Draining in-flight requests is each server's own job.

use tokio::sync::watch;

/// Fires the shutdown of everything created from its [`Shutdown`] handles.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A cheap, clonable handle that resolves once shutdown has been triggered.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Creates a connected trigger and handle.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Signals shutdown to every handle. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// A new handle connected to this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// Whether shutdown has already been triggered.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is triggered (immediately if it already was). A dropped trigger
    /// counts as a shutdown, so a task can never wait forever on an orphaned handle.
    pub async fn wait(&mut self) {
        // `wait_for` errs only when the sender is gone, which we also treat as shutdown.
        let _ = self.rx.wait_for(|stopped| *stopped).await;
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, whichever comes first.
pub async fn os_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_resolves_after_trigger_and_for_late_subscribers() {
        let (trigger, mut a) = channel();
        assert!(!a.is_triggered());
        trigger.trigger();
        a.wait().await;
        let mut late = trigger.subscribe();
        assert!(late.is_triggered());
        late.wait().await;
    }

    #[tokio::test]
    async fn dropped_trigger_counts_as_shutdown() {
        let (trigger, mut a) = channel();
        drop(trigger);
        a.wait().await;
    }
}
