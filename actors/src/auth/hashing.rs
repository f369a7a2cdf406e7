//! Password hashing off the request path, bounded: argon2id costs ~19 MiB
//! and tens of milliseconds of one core per hash, so a flood of sign-ins
//! must neither grow memory nor take the cores from API traffic. A fixed
//! set of low-priority threads (at most one per core) takes hashes from a
//! short queue. A caller takes its place ([`Place`]) before it does any
//! other work for the hash (such as reading the account from the store);
//! when every place is taken it is told to come back ([`Busy`]) at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::secrets::{self, SecretError};

/// How the pool is sized.
#[derive(Debug, Clone, Copy)]
pub struct HashingConfig {
    /// Hashes computed at once; each holds ~19 MiB while it runs.
    pub threads: usize,
    /// Hashes waiting for a thread; one more is refused.
    pub queue: usize,
    /// The threads' nice value (0 to 19): above 0, API traffic on the
    /// same cores is served first.
    pub nice: i32,
}

impl HashingConfig {
    /// Half the cores (at least one), a queue of four per thread, nice 10.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        let threads = (cores / 2).max(1);
        Self { threads, queue: threads * 4, nice: 10 }
    }
}

/// The pool is full: retry shortly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

enum Job {
    Verify { password: String, hash: Option<String>, reply: oneshot::Sender<bool> },
    Hash { password: String, reply: oneshot::Sender<Result<String, SecretError>> },
}

/// The pool's queue; the threads end when it is dropped.
pub struct PasswordHashing {
    queue: SyncSender<Job>,
    /// Places taken: hashes running, queued, or about to be queued.
    taken: Arc<AtomicUsize>,
    places: usize,
}

/// One hash's place in the pool, held from before the caller's other work
/// until its hash is done.
pub struct Place {
    taken: Arc<AtomicUsize>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A password hashing thread cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start a password hashing thread: {0}")]
pub struct HashingStartError(std::io::Error);

impl PasswordHashing {
    pub fn start(config: HashingConfig) -> Result<Arc<Self>, HashingStartError> {
        let places = config.threads.max(1) + config.queue.max(1);
        // Room for every place: a job with a place never waits to be queued.
        let (sender, receiver) = sync_channel::<Job>(places);
        let receiver = Arc::new(parking_lot::Mutex::new(receiver));
        for index in 0..config.threads.max(1) {
            let receiver = receiver.clone();
            let nice = config.nice;
            std::thread::Builder::new()
                .name(format!("blaze-password-{index}"))
                .spawn(move || {
                    lower_priority(nice);
                    let mut memory = secrets::PasswordMemory::default();
                    loop {
                        let job = receiver.lock().recv();
                        match job {
                            Ok(job) => run(job, &mut memory),
                            Err(_closed) => return,
                        }
                    }
                })
                .map_err(HashingStartError)?;
        }
        Ok(Arc::new(Self { queue: sender, taken: Arc::new(AtomicUsize::new(0)), places }))
    }

    /// A place for one hash, or [`Busy`] when all are taken.
    pub fn place(&self) -> Result<Place, Busy> {
        let taken = self.taken.fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
            (taken < self.places).then_some(taken + 1)
        });
        match taken {
            Ok(_) => Ok(Place { taken: self.taken.clone() }),
            Err(_) => {
                metrics::counter!("blaze_auth_password_hashing_refused_total").increment(1);
                Err(Busy)
            }
        }
    }

    /// Whether `password` matches `hash`; `None` (an unknown account)
    /// checks a stand-in hash, so the answer takes as long either way.
    pub async fn verify(&self, place: Place, password: String, hash: Option<String>) -> bool {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify { password, hash, reply });
        let verified = answer.await.unwrap_or(false);
        drop(place);
        verified
    }

    /// A new argon2id hash of `password`.
    pub async fn hash(&self, place: Place, password: String) -> Result<String, SecretError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash { password, reply });
        let hashed = answer.await.unwrap_or(Err(SecretError::HashingStopped));
        drop(place);
        hashed
    }

    /// Queues a job; with its place taken there is always room (a failed
    /// send drops the job, and its caller reads the closed reply).
    fn submit(&self, job: Job) {
        let _ = self.queue.try_send(job);
    }
}

fn run(job: Job, memory: &mut secrets::PasswordMemory) {
    match job {
        Job::Verify { password, hash, reply } => {
            let known = hash.is_some();
            let hash = hash.as_deref().unwrap_or_else(|| secrets::dummy_password_hash());
            let _ = reply.send(secrets::verify_password_in(memory, &password, hash) && known);
        }
        Job::Hash { password, reply } => {
            let _ = reply.send(secrets::hash_password(&password));
        }
    }
}

/// Lowers this thread's scheduling priority (Linux applies nice per
/// thread); elsewhere it is left as it is.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        // SAFETY: plain system calls on the calling thread's own id.
        unsafe {
            let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, thread, nice.min(19));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn places_run_out_at_once_and_come_back_when_hashes_end() {
        let pool = PasswordHashing::start(HashingConfig { threads: 1, queue: 1, nice: 0 }).unwrap();
        let hash = pool.hash(pool.place().unwrap(), "correct horse battery".to_owned()).await.unwrap();
        let (first, second) = (pool.place().unwrap(), pool.place().unwrap());
        assert!(pool.place().is_err(), "one running and one queued at most");
        let checks = futures_util::future::join(
            pool.verify(first, "correct horse battery".to_owned(), Some(hash.clone())),
            pool.verify(second, "wrong".to_owned(), Some(hash.clone())),
        );
        assert_eq!(checks.await, (true, false));
        let place = pool.place().expect("the places came back");
        assert!(!pool.verify(place, "anything".to_owned(), None).await);
    }
}
