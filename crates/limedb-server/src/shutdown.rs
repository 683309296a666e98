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

/// Registers for Ctrl-C (SIGINT) and SIGTERM *now* and returns a future that resolves on the
/// first of them. Registering before a node announces that it is ready means a signal sent
/// right after the announcement stops the node cleanly instead of killing it.
/// Must be called inside a tokio runtime.
pub fn os_signals() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("Ctrl-C received, shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("Ctrl-C received, shutting down");
            }
        })
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
