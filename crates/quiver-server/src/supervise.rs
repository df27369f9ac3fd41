//! Background tasks that must keep running — the change-log tail, the write path's
//! upkeep — restarted when they end or panic, and reported to `/readyz` while down.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The state of every supervised task: `None` while it runs, the reason it stopped
/// while it waits to restart.
#[derive(Debug, Default)]
pub struct Tasks {
    state: Mutex<BTreeMap<&'static str, Option<String>>>,
}

impl Tasks {
    /// Why the first task that is down stopped, if one is.
    pub fn failure(&self) -> Option<String> {
        let state = self.state.lock().expect("never poisoned");
        state
            .iter()
            .find_map(|(name, failure)| failure.as_ref().map(|why| format!("{name}: {why}")))
    }

    fn set(&self, name: &'static str, failure: Option<String>) {
        self.state
            .lock()
            .expect("never poisoned")
            .insert(name, failure);
    }

    /// Runs the task `make` builds until `shutdown`, building and starting it again
    /// (after a growing pause) whenever it ends or panics before then.
    pub fn supervise<F, Fut>(
        self: &Arc<Self>,
        name: &'static str,
        shutdown: CancellationToken,
        make: F,
    ) where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let tasks = Arc::clone(self);
        tasks.set(name, None);
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                let outcome = tokio::spawn(make()).await;
                if shutdown.is_cancelled() {
                    return;
                }
                let why = match outcome {
                    Ok(()) => "it stopped".to_owned(),
                    Err(err) if err.is_panic() => {
                        let payload = err.into_panic();
                        let message = payload
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_else(|| "a panic".to_owned());
                        format!("it panicked ({message})")
                    }
                    Err(err) => format!("it was cancelled ({err})"),
                };
                tracing::error!(task = name, reason = %why, ?pause, "background task down; restarting");
                tasks.set(name, Some(format!("{why}; restarting")));
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(10));
                tasks.set(name, None);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_reported_and_restarted() {
        let tasks = Arc::new(Tasks::default());
        let shutdown = CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        tasks.supervise("tail", shutdown.clone(), move || {
            let runs = Arc::clone(&counted);
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("boom");
                }
                std::future::pending::<()>().await;
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let failure = tasks.failure().expect("down after the panic");
        assert!(
            failure.contains("tail") && failure.contains("boom"),
            "{failure}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(tasks.failure(), None, "restarted");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        shutdown.cancel();
    }
}
