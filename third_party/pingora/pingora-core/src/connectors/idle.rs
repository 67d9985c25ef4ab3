// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! The keep-alive pool of idle upstream streams (Weir patch 4, see
//! `third_party/pingora/PATCHES.md`).
//!
//! A stream given back is pushed on its key's stack under one short lock:
//! no task, no timer, no channel and no `Arc<Mutex>` per stream, where
//! `pingora_pool::ConnectionPool` spawned an idle-watch task for every
//! release. Taking a stream pops its key's most recent one (the warmest, and
//! the least likely to have been closed by the server).
//!
//! One sweeper task per pool, started by the first idle stream and ended
//! when the pool is empty, closes every [`SWEEP`] the streams whose idle
//! timeout passed, that the server closed, or that received data. A stream
//! is checked the same way when it is taken, so a stream the sweeper has
//! not seen yet is never handed out; what the sweeper changes is only how
//! soon an unused stream's socket is closed (within [`SWEEP`] instead of at
//! once).
//!
//! Over capacity, the stream idle the longest, whatever its key, is closed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
// tokio's clock: the same as std's, except that tests can pause it
use tokio::time::Instant;

use super::{test_reusable_stream, PoolCallback};
use crate::protocols::Stream;

/// How often the sweeper looks at the idle streams.
pub(crate) const SWEEP: Duration = Duration::from_secs(1);

struct Idle {
    stream: Stream,
    since: Instant,
    deadline: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    /// Per key, oldest first.
    keys: HashMap<u64, VecDeque<Idle>>,
    count: usize,
    sweeping: bool,
}

impl Inner {
    /// Removes the stream idle the longest, whatever its key.
    fn pop_oldest(&mut self) -> Option<Idle> {
        let key = *self
            .keys
            .iter()
            .filter_map(|(k, list)| list.front().map(|i| (k, i.since)))
            .min_by_key(|(_, since)| *since)?
            .0;
        let idle = self.keys.get_mut(&key)?.pop_front()?;
        self.count -= 1;
        Some(idle)
    }
}

pub(crate) struct IdlePool {
    inner: Mutex<Inner>,
    capacity: usize,
    unexpected_data: Arc<AtomicU64>,
    evicted: Option<PoolCallback>,
}

impl IdlePool {
    pub(crate) fn new(
        capacity: usize,
        unexpected_data: Arc<AtomicU64>,
        evicted: Option<PoolCallback>,
    ) -> Self {
        IdlePool {
            inner: Mutex::new(Inner::default()),
            capacity,
            unexpected_data,
            evicted,
        }
    }

    /// Keeps `stream` for a later request to `key`, for at most
    /// `idle_timeout` (no bound when `None`).
    pub(crate) fn put(self: &Arc<Self>, key: u64, stream: Stream, idle_timeout: Option<Duration>) {
        if self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        let idle = Idle {
            stream,
            since: now,
            deadline: idle_timeout.map(|t| now + t),
        };
        let (evicted, start_sweeper) = {
            let mut inner = self.inner.lock();
            inner.keys.entry(key).or_default().push_back(idle);
            inner.count += 1;
            let evicted = if inner.count > self.capacity {
                inner.pop_oldest()
            } else {
                None
            };
            (evicted, !std::mem::replace(&mut inner.sweeping, true))
        };
        if let Some(old) = evicted {
            if let Some(callback) = &self.evicted {
                callback(old.since.elapsed());
            }
            // dropped here, outside the lock: the socket is closed
        }
        if start_sweeper {
            let pool = Arc::downgrade(self);
            pingora_runtime::current_handle().spawn(sweep_until_empty(pool));
        }
    }

    /// The most recent idle stream of `key` that is still usable: within
    /// its idle timeout, not closed by the server, no data received.
    /// Streams found unusable on the way are closed.
    pub(crate) fn get(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        loop {
            let mut idle = {
                let mut inner = self.inner.lock();
                let idle = inner.keys.get_mut(&key)?.pop_back()?;
                inner.count -= 1;
                idle
            };
            if idle.deadline.is_some_and(|d| d <= now) {
                continue;
            }
            if test_reusable_stream(&mut idle.stream, &self.unexpected_data) {
                return Some(idle.stream);
            }
        }
    }

    /// Closes what timed out, was closed or received data; returns whether
    /// anything is left to watch (when not, the sweeper stops, and the next
    /// `put` starts another).
    fn sweep(&self) -> bool {
        let now = Instant::now();
        let mut closed = Vec::new();
        let more = {
            let mut inner = self.inner.lock();
            let Inner { keys, count, .. } = &mut *inner;
            keys.retain(|_, list| {
                for mut idle in std::mem::take(list) {
                    let usable = idle.deadline.is_none_or(|d| d > now)
                        && test_reusable_stream(&mut idle.stream, &self.unexpected_data);
                    if usable {
                        list.push_back(idle);
                    } else {
                        closed.push(idle);
                    }
                }
                !list.is_empty()
            });
            *count -= closed.len();
            if *count == 0 {
                inner.sweeping = false;
            }
            inner.sweeping
        };
        drop(closed);
        more
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().count
    }
}

async fn sweep_until_empty(pool: Weak<IdlePool>) {
    loop {
        tokio::time::sleep(SWEEP).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if !pool.sweep() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn pool(capacity: usize) -> (Arc<IdlePool>, Arc<AtomicU64>) {
        let unexpected = Arc::new(AtomicU64::new(0));
        (
            Arc::new(IdlePool::new(capacity, unexpected.clone(), None)),
            unexpected,
        )
    }

    /// A stream and the server's end of it; the stream's first byte written
    /// by the client names it.
    fn pair() -> (Stream, DuplexStream) {
        let (client, server) = tokio::io::duplex(64);
        (Box::new(client), server)
    }

    async fn name_of(mut stream: Stream, server: &mut DuplexStream, name: u8) -> Stream {
        stream.write_all(&[name]).await.unwrap();
        let mut b = [0u8; 1];
        server.read_exact(&mut b).await.unwrap();
        assert_eq!(b[0], name);
        stream
    }

    #[tokio::test]
    async fn the_most_recent_stream_of_the_key_is_taken() {
        let (pool, _) = pool(8);
        let (a, mut sa) = pair();
        let (b, _sb) = pair();
        pool.put(1, a, None);
        pool.put(1, b, None);
        pool.put(2, pair().0, None);
        assert_eq!(pool.len(), 3);
        // b was given back last: it comes first
        let first = pool.get(1).unwrap();
        let second = pool.get(1).unwrap();
        name_of(second, &mut sa, 7).await;
        drop(first);
        assert!(pool.get(1).is_none());
        assert_eq!(pool.len(), 1);
        assert!(pool.get(3).is_none());
    }

    #[tokio::test]
    async fn closed_timed_out_and_chatty_streams_are_not_handed_out() {
        let (pool, unexpected) = pool(8);
        let (good, mut s_good) = pair();
        let (closed, s_closed) = pair();
        let (chatty, mut s_chatty) = pair();
        pool.put(1, good, None);
        pool.put(1, closed, None);
        pool.put(1, chatty, None);
        pool.put(1, pair().0, Some(Duration::ZERO));
        drop(s_closed);
        s_chatty.write_all(b"HTTP/1.1 408\r\n").await.unwrap();
        let got = pool
            .get(1)
            .expect("the good stream is found under the others");
        name_of(got, &mut s_good, 1).await;
        assert_eq!(unexpected.load(Ordering::Relaxed), 1);
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn over_capacity_the_longest_idle_stream_is_closed() {
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = evictions.clone();
        let pool = Arc::new(IdlePool::new(
            2,
            Arc::new(AtomicU64::new(0)),
            Some(Arc::new(move |_| {
                counted.fetch_add(1, Ordering::Relaxed);
            })),
        ));
        let (oldest, mut s_oldest) = pair();
        pool.put(1, oldest, None);
        pool.put(2, pair().0, None);
        pool.put(3, pair().0, None);
        assert_eq!(pool.len(), 2);
        assert_eq!(evictions.load(Ordering::Relaxed), 1);
        assert!(pool.get(1).is_none());
        // the server sees the evicted stream closed
        let mut b = [0u8; 1];
        assert_eq!(s_oldest.read(&mut b).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_closes_what_timed_out_or_was_closed_then_stops() {
        let (pool, _) = pool(8);
        let (short, mut s_short) = pair();
        let (closed, s_closed) = pair();
        let (long, _s_long) = pair();
        pool.put(1, short, Some(Duration::from_millis(1500)));
        pool.put(1, closed, None);
        pool.put(2, long, Some(Duration::from_secs(10)));
        drop(s_closed);
        tokio::time::sleep(SWEEP + Duration::from_millis(10)).await;
        assert_eq!(pool.len(), 2, "the closed stream goes at the first sweep");
        tokio::time::sleep(SWEEP).await;
        assert_eq!(pool.len(), 1, "the short timeout has passed at the second");
        let mut b = [0u8; 1];
        assert_eq!(s_short.read(&mut b).await.unwrap(), 0);
        assert!(pool.get(2).is_some());
        tokio::time::sleep(SWEEP * 2).await;
        assert!(!pool.inner.lock().sweeping, "the sweeper stops once empty");
        // and a new stream starts another
        pool.put(3, pair().0, Some(Duration::from_millis(10)));
        assert!(pool.inner.lock().sweeping);
        tokio::time::sleep(SWEEP * 2).await;
        assert_eq!(pool.len(), 0);
    }
}
