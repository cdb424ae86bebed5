//! Time, behind a trait: back-off, the stable-period reset, grace periods,
//! health-check intervals and path polling all wait on a [`Clock`], so tests
//! drive them with a [`FakeClock`] instead of sleeping for seconds.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

pub trait Clock: Send + Sync + 'static {
    /// Monotonic time, for durations.
    fn now(&self) -> Instant;
    /// Wall time, for the timestamps in state files and log lines.
    fn wall(&self) -> SystemTime;
    fn sleep(&self, duration: Duration) -> Sleep;
}

/// The real clock (tokio's timer).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A clock that moves only when told to. Sleepers wake when
/// [`FakeClock::advance`] moves time past their deadline.
#[derive(Debug, Clone)]
pub struct FakeClock {
    inner: Arc<Mutex<FakeState>>,
    start: Instant,
    wall_start: SystemTime,
}

#[derive(Debug, Default)]
struct FakeState {
    elapsed: Duration,
    sleepers: Vec<(Duration, Duration, oneshot::Sender<()>)>,
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeClock {
    pub fn new() -> Self {
        FakeClock {
            inner: Arc::default(),
            start: Instant::now(),
            // A fixed wall time so state files in tests are reproducible.
            wall_start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time since the clock was made.
    pub fn elapsed(&self) -> Duration {
        self.state().elapsed
    }

    /// Moves time forward and wakes every sleeper whose deadline has come.
    pub fn advance(&self, by: Duration) {
        let mut state = self.state();
        state.elapsed += by;
        let now = state.elapsed;
        let sleepers = std::mem::take(&mut state.sleepers);
        for (deadline, asked, tx) in sleepers {
            if deadline <= now {
                let _ = tx.send(());
            } else if !tx.is_closed() {
                state.sleepers.push((deadline, asked, tx));
            }
        }
    }

    /// The durations the current sleepers asked for, in the order they
    /// started sleeping (dropped sleeps excluded).
    pub fn pending_sleeps(&self) -> Vec<Duration> {
        self.state().sleepers.iter().filter(|(_, _, tx)| !tx.is_closed()).map(|(_, asked, _)| *asked).collect()
    }

    /// How long until the earliest sleeper wakes.
    pub fn next_wake(&self) -> Option<Duration> {
        let state = self.state();
        state
            .sleepers
            .iter()
            .filter(|(_, _, tx)| !tx.is_closed())
            .map(|(deadline, _, _)| deadline.saturating_sub(state.elapsed))
            .min()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }
    fn wall(&self) -> SystemTime {
        self.wall_start + self.elapsed()
    }
    fn sleep(&self, duration: Duration) -> Sleep {
        if duration.is_zero() {
            return Box::pin(std::future::ready(()));
        }
        let (tx, rx) = oneshot::channel();
        let mut state = self.state();
        let deadline = state.elapsed + duration;
        state.sleepers.push((deadline, duration, tx));
        Box::pin(async move {
            // A dropped clock never wakes its sleepers: they wait forever,
            // as a sleep on a stopped clock would.
            if rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleepers_wake_only_once_their_deadline_has_passed() {
        let clock = FakeClock::new();
        let mut short = clock.sleep(Duration::from_secs(1));
        let mut long = clock.sleep(Duration::from_secs(5));
        assert_eq!(clock.pending_sleeps(), vec![Duration::from_secs(1), Duration::from_secs(5)]);
        clock.advance(Duration::from_millis(999));
        assert!(futures_poll(&mut short).is_pending());
        clock.advance(Duration::from_millis(1));
        assert!(futures_poll(&mut short).is_ready());
        assert!(futures_poll(&mut long).is_pending());
        assert_eq!(clock.next_wake(), Some(Duration::from_secs(4)));
        clock.advance(Duration::from_secs(4));
        assert!(futures_poll(&mut long).is_ready());
        assert_eq!(clock.elapsed(), Duration::from_secs(5));
    }

    fn futures_poll(f: &mut Sleep) -> std::task::Poll<()> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        f.as_mut().poll(&mut cx)
    }
}
