//! A TCP fault proxy: latency, jitter, stalls, resets and blackholes on the paths between nodes.
//!
//! The machine's kernel has no `netem`, so the suite puts a [`FaultProxy`] on each peer path (an
//! iptables DNAT rule inside node A's network namespace sends A's connections to B's Raft port to
//! the proxy, which forwards them to B) and changes its [`ProxyMode`] while the workload runs. The
//! proxy only moves bytes: the nodes' TLS runs end to end through it.
//!
//! Each accepted connection gets a connection to the upstream and, per direction, a reader thread
//! that timestamps the chunks it reads into a bounded queue and a writer thread that delivers each
//! chunk when it is due. A delay therefore does not limit throughput (the chunks are pipelined),
//! order is preserved (due times never go backwards), and a stall only holds the queue.
//!
//! Resources are bounded: at most [`ProxyLimits::max_connections`] connections at once (more are
//! accepted and closed at once), at most [`ProxyLimits::max_queued_bytes`] queued per direction
//! of a connection (then the reader stops reading, so the sender's TCP window closes), and every
//! socket has a short read/write timeout so that threads notice a mode change, a reset or
//! [`FaultProxy::shutdown`] within about 200 ms.
//!
//! Modes apply to existing and new connections:
//!
//! - [`ProxyMode::Pass`] forwards at once (queued chunks, even delayed ones, go out at once).
//! - [`ProxyMode::Delay`] delivers each chunk `delay_ms ± jitter_ms` (uniform) after it was read.
//! - [`ProxyMode::Stall`] holds every byte in both directions, connections stay open; switching
//!   back to `Pass` or `Delay` lets the held bytes flow.
//! - [`ProxyMode::Reset`] closes every connection abortively (RST where the platform allows
//!   `SO_LINGER` 0, else a plain close) and closes new connections as soon as they are accepted.
//! - [`ProxyMode::Drop`] reads and discards everything, forwards nothing: a silent network. New
//!   connections are accepted but get no upstream connection. A connection that lost bytes this
//!   way can never carry a valid stream again (TLS would fail on the gap), so it is closed
//!   abortively as soon as the mode is `Pass` or `Delay` again; its peers reconnect.
//!
//! A half-close is propagated: when one side shuts down its write half, the other side's write
//! half is shut down once the bytes queued before it were delivered. An error on either socket (or
//! an upstream that cannot be reached) closes the connection abortively on both sides.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Default cap on concurrent connections per proxy.
pub const MAX_CONNECTIONS: usize = 256;
/// Default cap on the bytes queued per direction of one connection.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

/// Largest chunk read at once.
const CHUNK: usize = 64 << 10;
/// Read timeout on every socket, and the longest a waiting thread goes without rechecking state.
const POLL: Duration = Duration::from_millis(100);
/// Write timeout on every socket.
const WRITE_POLL: Duration = Duration::from_millis(200);
/// Pause of the (non-blocking) accept loop when there is nothing to accept.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// Longest wait for the upstream to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest [`FaultProxy::shutdown`] waits for its threads; later ones are left to finish alone.
const JOIN_TIMEOUT: Duration = Duration::from_secs(2);

/// What a proxy does with the bytes it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward at once.
    Pass,
    /// Deliver each chunk `delay_ms ± jitter_ms` (uniform) after it was read, in order.
    Delay { delay_ms: u64, jitter_ms: u64 },
    /// Forward nothing in either direction but keep the bytes and the connections; switching back
    /// to `Pass` or `Delay` delivers the held bytes.
    Stall,
    /// Close every connection abortively and close new ones as soon as they are accepted.
    Reset,
    /// Read and discard everything, forward nothing (a silent network).
    Drop,
}

/// Bounds of one proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Connections open at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// Bytes queued per direction of one connection before its reader stops reading.
    pub max_queued_bytes: usize,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits { max_connections: MAX_CONNECTIONS, max_queued_bytes: MAX_QUEUED_BYTES }
    }
}

/// Counters of one proxy since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted and served (forwarded or blackholed).
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Connections closed at once because [`ProxyLimits::max_connections`] were open.
    pub rejected: u64,
    /// Connections closed by [`ProxyMode::Reset`]: open ones reset, and new ones refused.
    pub resets: u64,
    /// Connections closed because the upstream could not be reached.
    pub upstream_failures: u64,
    /// Bytes delivered to the upstream.
    pub bytes_to_upstream: u64,
    /// Bytes delivered to the clients.
    pub bytes_to_client: u64,
    /// Bytes read and thrown away by [`ProxyMode::Drop`].
    pub discarded_bytes: u64,
    /// Bytes read and not yet delivered, over all connections, now.
    pub queued_bytes: u64,
}

/// One listener forwarding every connection it accepts to one upstream, through the faults of its
/// current [`ProxyMode`]. Dropping it shuts it down.
pub struct FaultProxy {
    shared: Arc<Shared>,
    local: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl FaultProxy {
    /// Binds `listen` (port 0 picks a free port) and starts accepting, in [`ProxyMode::Pass`].
    /// `seed` drives the jitter.
    pub fn start(listen: SocketAddr, upstream: SocketAddr, seed: u64) -> io::Result<FaultProxy> {
        Self::start_with_limits(listen, upstream, seed, ProxyLimits::default())
    }

    /// [`FaultProxy::start`] with other bounds.
    pub fn start_with_limits(listen: SocketAddr, upstream: SocketAddr, seed: u64, limits: ProxyLimits) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            limits: ProxyLimits { max_connections: limits.max_connections, max_queued_bytes: limits.max_queued_bytes.max(1) },
            mode: Mutex::new(ProxyMode::Pass),
            shutdown: AtomicBool::new(false),
            rng: Mutex::new(SplitMix64(seed)),
            conns: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            counters: Counters::default(),
        });
        let accept_shared = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name(format!("fault-proxy-accept-{}", local.port()))
            .spawn(move || accept_loop(accept_shared, listener))?;
        Ok(FaultProxy { shared, local, accept: Mutex::new(Some(handle)) })
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The upstream every connection is forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Switches the mode, for the open connections and the next ones.
    pub fn set_mode(&self, mode: ProxyMode) {
        *lock(&self.shared.mode) = mode.clone();
        let conns = self.shared.live_conns();
        if mode == ProxyMode::Reset {
            for conn in &conns {
                conn.reset();
            }
        }
        for conn in &conns {
            conn.notify();
        }
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.shared.mode()
    }

    /// The counters now.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        ProxyStats {
            accepted: get(&c.accepted),
            active: get(&c.active),
            rejected: get(&c.rejected),
            resets: get(&c.resets),
            upstream_failures: get(&c.upstream_failures),
            bytes_to_upstream: get(&c.bytes_to_upstream),
            bytes_to_client: get(&c.bytes_to_client),
            discarded_bytes: get(&c.discarded_bytes),
            queued_bytes: get(&c.queued_bytes),
        }
    }

    /// Stops accepting, closes every connection and waits (at most about 2 s) for the threads to
    /// end. Calling it again does nothing more.
    pub fn shutdown(&self) {
        self.signal_shutdown();
        self.join(Instant::now() + JOIN_TIMEOUT);
    }

    fn signal_shutdown(&self) {
        if self.shared.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        for conn in self.shared.live_conns() {
            conn.abort(false);
        }
    }

    fn join(&self, deadline: Instant) {
        let mut accept = lock(&self.accept).take();
        loop {
            if accept.as_ref().is_some_and(|h| h.is_finished()) {
                if let Some(handle) = accept.take() {
                    let _ = handle.join();
                }
            }
            {
                let mut threads = lock(&self.shared.threads);
                let (done, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut *threads).into_iter().partition(|h| h.is_finished());
                *threads = pending;
                drop(threads);
                for handle in done {
                    let _ = handle.join();
                }
            }
            let idle = accept.is_none() && lock(&self.shared.threads).is_empty();
            if idle || Instant::now() >= deadline {
                // Threads still running past the deadline are left to end on their own (every
                // one of them sees the shutdown flag within a poll interval).
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown()
    }
}

/// Several proxies, one per directed pair of nodes `(from, to)`.
pub struct ProxySet {
    seed: u64,
    proxies: Mutex<BTreeMap<(u64, u64), Arc<FaultProxy>>>,
}

impl ProxySet {
    /// An empty set; each proxy's jitter seed derives from `seed` and its pair.
    pub fn new(seed: u64) -> ProxySet {
        ProxySet { seed, proxies: Mutex::new(BTreeMap::new()) }
    }

    /// Starts a proxy for `(from, to)` listening on `listen` and forwarding to `upstream`, and
    /// returns the address it listens on. Fails with `AlreadyExists` if the pair has one.
    pub fn add(&self, from: u64, to: u64, listen: SocketAddr, upstream: SocketAddr) -> io::Result<SocketAddr> {
        let mut proxies = lock(&self.proxies);
        if proxies.contains_key(&(from, to)) {
            return Err(io::Error::new(ErrorKind::AlreadyExists, format!("a proxy for {from} -> {to} exists")));
        }
        let seed = SplitMix64(self.seed ^ from.rotate_left(32) ^ to).next();
        let proxy = FaultProxy::start(listen, upstream, seed)?;
        let addr = proxy.local_addr();
        proxies.insert((from, to), Arc::new(proxy));
        Ok(addr)
    }

    /// Sets the mode of the pair's proxy; false if there is none.
    pub fn set_mode(&self, pair: (u64, u64), mode: ProxyMode) -> bool {
        match self.get(pair) {
            Some(proxy) => {
                proxy.set_mode(mode);
                true
            }
            None => false,
        }
    }

    /// Sets the mode of every proxy.
    pub fn set_all(&self, mode: ProxyMode) {
        for proxy in self.all() {
            proxy.set_mode(mode.clone());
        }
    }

    /// Sets the mode of every proxy on a path from or to `node` (cutting it off, say).
    pub fn set_node(&self, node: u64, mode: ProxyMode) {
        let proxies: Vec<Arc<FaultProxy>> =
            lock(&self.proxies).iter().filter(|((from, to), _)| *from == node || *to == node).map(|(_, p)| Arc::clone(p)).collect();
        for proxy in proxies {
            proxy.set_mode(mode.clone());
        }
    }

    /// The pair's proxy.
    pub fn get(&self, pair: (u64, u64)) -> Option<Arc<FaultProxy>> {
        lock(&self.proxies).get(&pair).cloned()
    }

    /// The pairs that have a proxy, in order.
    pub fn pairs(&self) -> Vec<(u64, u64)> {
        lock(&self.proxies).keys().copied().collect()
    }

    /// Every proxy's counters.
    pub fn stats(&self) -> BTreeMap<(u64, u64), ProxyStats> {
        lock(&self.proxies).iter().map(|(pair, p)| (*pair, p.stats())).collect()
    }

    /// Shuts every proxy down (together, one bounded wait) and forgets them.
    pub fn shutdown_all(&self) {
        let proxies = std::mem::take(&mut *lock(&self.proxies));
        for proxy in proxies.values() {
            proxy.signal_shutdown();
        }
        let deadline = Instant::now() + JOIN_TIMEOUT;
        for proxy in proxies.values() {
            proxy.join(deadline);
        }
    }

    fn all(&self) -> Vec<Arc<FaultProxy>> {
        lock(&self.proxies).values().cloned().collect()
    }
}

impl Default for ProxySet {
    fn default() -> Self {
        ProxySet::new(0)
    }
}

impl Drop for ProxySet {
    fn drop(&mut self) {
        self.shutdown_all()
    }
}

// ---------------------------------------------------------------------------------------------

struct Shared {
    upstream: SocketAddr,
    limits: ProxyLimits,
    mode: Mutex<ProxyMode>,
    shutdown: AtomicBool,
    rng: Mutex<SplitMix64>,
    conns: Mutex<Vec<Weak<Conn>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    active: AtomicU64,
    rejected: AtomicU64,
    resets: AtomicU64,
    upstream_failures: AtomicU64,
    bytes_to_upstream: AtomicU64,
    bytes_to_client: AtomicU64,
    discarded_bytes: AtomicU64,
    queued_bytes: AtomicU64,
}

impl Shared {
    fn mode(&self) -> ProxyMode {
        lock(&self.mode).clone()
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let handle = thread::Builder::new().name(name.to_string()).spawn(f)?;
        lock(&self.threads).push(handle);
        Ok(())
    }

    fn register(&self, conn: &Arc<Conn>) {
        let mut conns = lock(&self.conns);
        conns.retain(|c| c.strong_count() > 0);
        conns.push(Arc::downgrade(conn));
    }

    fn live_conns(&self) -> Vec<Arc<Conn>> {
        lock(&self.conns).iter().filter_map(Weak::upgrade).collect()
    }

    /// When a chunk read now in `mode` is due, never before the previous chunk of its direction.
    fn due(&self, mode: &ProxyMode, previous: Option<Instant>) -> Instant {
        let now = Instant::now();
        let due = match *mode {
            ProxyMode::Delay { delay_ms, jitter_ms } => {
                let jitter_us = jitter_ms.saturating_mul(1000);
                let offset = if jitter_us == 0 { 0 } else { lock(&self.rng).next() % (jitter_us.saturating_mul(2).saturating_add(1)) };
                let micros = delay_ms.saturating_mul(1000).saturating_add(offset).saturating_sub(jitter_us);
                now.checked_add(Duration::from_micros(micros)).unwrap_or_else(|| now + Duration::from_secs(86_400))
            }
            _ => now,
        };
        match previous {
            Some(previous) if previous > due => previous,
            _ => due,
        }
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut pruned = Instant::now();
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, _)) => on_accept(&shared, stream),
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Out of descriptors and the like: back off, the listener itself stays.
            Err(_) => thread::sleep(POLL),
        }
        if pruned.elapsed() >= Duration::from_millis(500) {
            pruned = Instant::now();
            lock(&shared.threads).retain(|h| !h.is_finished());
            lock(&shared.conns).retain(|c| c.strong_count() > 0);
        }
    }
}

fn on_accept(shared: &Arc<Shared>, stream: TcpStream) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let mode = shared.mode();
    let counters = &shared.counters;
    if mode == ProxyMode::Reset {
        set_linger_zero(&stream);
        counters.resets.fetch_add(1, Ordering::SeqCst);
        return;
    }
    if counters.active.load(Ordering::SeqCst) >= shared.limits.max_connections as u64 {
        set_linger_zero(&stream);
        counters.rejected.fetch_add(1, Ordering::SeqCst);
        return;
    }
    if configure(&stream).is_err() {
        return;
    }
    counters.accepted.fetch_add(1, Ordering::SeqCst);
    let guard = ActiveGuard::new(Arc::clone(shared));
    let blackhole = mode == ProxyMode::Drop;
    let conn_shared = Arc::clone(shared);
    // On a failed spawn the closure, with the stream and the guard, is dropped: the client is closed.
    let _ = shared.spawn("fault-proxy-conn", move || run_conn(conn_shared, stream, guard, blackhole));
}

fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(WRITE_POLL))
}

fn run_conn(shared: Arc<Shared>, client: TcpStream, guard: ActiveGuard, blackhole: bool) {
    let upstream = if blackhole {
        None
    } else {
        match TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT).and_then(|s| configure(&s).map(|()| s)) {
            Ok(s) => Some(s),
            Err(_) => {
                shared.counters.upstream_failures.fetch_add(1, Ordering::SeqCst);
                set_linger_zero(&client);
                return;
            }
        }
    };
    let conn = Arc::new(Conn {
        shared: Arc::clone(&shared),
        client,
        upstream,
        pipes: [Pipe::new(), Pipe::new()],
        aborted: AtomicBool::new(false),
        tainted: AtomicBool::new(blackhole),
        _active: guard,
    });
    shared.register(&conn);
    if blackhole {
        run_reader(conn, TO_UPSTREAM);
        return;
    }
    let spawned = [(TO_UPSTREAM, true), (TO_UPSTREAM, false), (TO_CLIENT, true)].into_iter().all(|(dir, reader)| {
        let c = Arc::clone(&conn);
        let name = if reader { "fault-proxy-read" } else { "fault-proxy-write" };
        shared.spawn(name, move || if reader { run_reader(c, dir) } else { run_writer(c, dir) }).is_ok()
    });
    if !spawned {
        conn.abort(true);
        return;
    }
    run_writer(conn, TO_CLIENT);
}

/// Direction index: bytes from the client to the upstream.
const TO_UPSTREAM: usize = 0;
/// Direction index: bytes from the upstream to the client.
const TO_CLIENT: usize = 1;

struct Conn {
    shared: Arc<Shared>,
    client: TcpStream,
    /// None for a blackholed connection (accepted in `Drop` mode).
    upstream: Option<TcpStream>,
    pipes: [Pipe; 2],
    aborted: AtomicBool,
    /// Bytes were thrown away: the stream can never be valid again.
    tainted: AtomicBool,
    _active: ActiveGuard,
}

struct Pipe {
    state: Mutex<PipeState>,
    cond: Condvar,
}

struct PipeState {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    last_due: Option<Instant>,
}

struct Chunk {
    due: Instant,
    data: Vec<u8>,
    /// The source shut down its write half; always the last chunk.
    eof: bool,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe { state: Mutex::new(PipeState { chunks: VecDeque::new(), bytes: 0, last_due: None }), cond: Condvar::new() }
    }
}

impl Conn {
    /// (source, destination) of a direction.
    fn ends(&self, dir: usize) -> Option<(&TcpStream, &TcpStream)> {
        let upstream = self.upstream.as_ref()?;
        Some(if dir == TO_UPSTREAM { (&self.client, upstream) } else { (upstream, &self.client) })
    }

    fn stopped(&self) -> bool {
        self.aborted.load(Ordering::SeqCst) || self.shared.stopping()
    }

    /// Applies `mode` to the connection; true if its threads must end.
    fn check(&self, mode: &ProxyMode) -> bool {
        match mode {
            ProxyMode::Reset => self.reset(),
            ProxyMode::Pass | ProxyMode::Delay { .. } if self.tainted.load(Ordering::SeqCst) => {
                self.abort(true);
            }
            _ => {}
        }
        self.stopped()
    }

    fn reset(&self) {
        if self.abort(true) {
            self.shared.counters.resets.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Closes both sides: abortively (RST once the last thread lets go of the sockets) when
    /// `rst`, else with a FIN. True the first time.
    fn abort(&self, rst: bool) -> bool {
        if self.aborted.swap(true, Ordering::SeqCst) {
            return false;
        }
        // With SO_LINGER 0, only shut the read half (which wakes the readers): a FIN now would
        // come before the RST that the close sends.
        let how = if rst { Shutdown::Read } else { Shutdown::Both };
        for stream in std::iter::once(&self.client).chain(self.upstream.as_ref()) {
            if rst {
                set_linger_zero(stream);
            }
            let _ = stream.shutdown(how);
        }
        self.notify();
        true
    }

    /// Wakes the threads waiting on the queues, to recheck the mode and the flags.
    fn notify(&self) {
        for pipe in &self.pipes {
            drop(lock(&pipe.state));
            pipe.cond.notify_all();
        }
    }

    /// Queues bytes (or the end of the stream) read from a direction's source; waits while the
    /// queue is full. False if the connection ended meanwhile.
    fn push(&self, dir: usize, data: &[u8], eof: bool) -> bool {
        let pipe = &self.pipes[dir];
        let mut st = lock(&pipe.state);
        while st.bytes > 0 && st.bytes + data.len() > self.shared.limits.max_queued_bytes {
            if self.stopped() {
                return false;
            }
            st = wait(&pipe.cond, st, POLL);
        }
        if self.stopped() {
            return false;
        }
        let mode = self.shared.mode();
        let due = self.shared.due(&mode, st.last_due);
        st.last_due = Some(due);
        st.bytes += data.len();
        self.shared.counters.queued_bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
        st.chunks.push_back(Chunk { due, data: data.to_vec(), eof });
        drop(st);
        pipe.cond.notify_all();
        true
    }

    /// Writes all of `data` to `dst`; false (and the connection aborted) if it could not.
    fn write_all(&self, mut dst: &TcpStream, data: &[u8]) -> bool {
        let mut offset = 0;
        while offset < data.len() {
            if self.stopped() {
                return false;
            }
            match dst.write(&data[offset..]) {
                Ok(0) => {
                    self.abort(true);
                    return false;
                }
                Ok(n) => offset += n,
                Err(e) if transient(&e) => {}
                Err(_) => {
                    self.abort(true);
                    return false;
                }
            }
        }
        true
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let queued: usize = self.pipes.iter().map(|p| lock(&p.state).bytes).sum();
        self.shared.counters.queued_bytes.fetch_sub(queued as u64, Ordering::SeqCst);
    }
}

/// Reads a direction's source into its queue (or, in `Drop` mode, into nothing).
fn run_reader(conn: Arc<Conn>, dir: usize) {
    let mut src = if dir == TO_UPSTREAM {
        &conn.client
    } else {
        match conn.upstream.as_ref() {
            Some(upstream) => upstream,
            None => return,
        }
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mode = conn.shared.mode();
        if conn.check(&mode) {
            return;
        }
        match src.read(&mut buf) {
            Ok(0) => {
                if conn.upstream.is_none() {
                    // A blackholed client is done: nothing to propagate.
                    return;
                }
                conn.push(dir, &[], true);
                return;
            }
            Ok(n) => {
                let mode = conn.shared.mode();
                if conn.check(&mode) {
                    return;
                }
                if mode == ProxyMode::Drop || conn.upstream.is_none() {
                    conn.tainted.store(true, Ordering::SeqCst);
                    conn.shared.counters.discarded_bytes.fetch_add(n as u64, Ordering::SeqCst);
                } else if !conn.push(dir, &buf[..n], false) {
                    return;
                }
            }
            Err(e) if transient(&e) => {}
            Err(_) => {
                conn.abort(true);
                return;
            }
        }
    }
}

/// Delivers a direction's queue to its destination, each chunk when it is due and the mode lets it.
fn run_writer(conn: Arc<Conn>, dir: usize) {
    let Some((_, dst)) = conn.ends(dir) else { return };
    let pipe = &conn.pipes[dir];
    loop {
        // Outside the queue's lock: `check` may abort, which takes that lock to wake the others.
        let mode = conn.shared.mode();
        if conn.check(&mode) {
            return;
        }
        let mut st = lock(&pipe.state);
        if conn.stopped() || conn.shared.mode() != mode {
            continue;
        }
        let mut timeout = POLL;
        let mut chunk = None;
        match mode {
            ProxyMode::Pass => chunk = st.chunks.pop_front(),
            ProxyMode::Delay { .. } => {
                let now = Instant::now();
                match st.chunks.front().map(|c| c.due) {
                    Some(due) if due <= now => chunk = st.chunks.pop_front(),
                    Some(due) => timeout = timeout.min(due - now),
                    None => {}
                }
            }
            ProxyMode::Drop => {
                // Throw away what is queued, except the end of the stream (held, as in a stall).
                let mut discarded = 0;
                while st.chunks.front().is_some_and(|c| !c.eof) {
                    if let Some(c) = st.chunks.pop_front() {
                        discarded += c.data.len();
                    }
                }
                if discarded > 0 {
                    st.bytes -= discarded;
                    let counters = &conn.shared.counters;
                    counters.queued_bytes.fetch_sub(discarded as u64, Ordering::SeqCst);
                    counters.discarded_bytes.fetch_add(discarded as u64, Ordering::SeqCst);
                    conn.tainted.store(true, Ordering::SeqCst);
                    pipe.cond.notify_all();
                }
            }
            ProxyMode::Stall | ProxyMode::Reset => {}
        }
        let Some(chunk) = chunk else {
            drop(wait(&pipe.cond, st, timeout));
            continue;
        };
        st.bytes -= chunk.data.len();
        conn.shared.counters.queued_bytes.fetch_sub(chunk.data.len() as u64, Ordering::SeqCst);
        drop(st);
        pipe.cond.notify_all();
        if chunk.eof {
            let _ = dst.shutdown(Shutdown::Write);
            return;
        }
        if !conn.write_all(dst, &chunk.data) {
            return;
        }
        let counters = &conn.shared.counters;
        let counter = if dir == TO_UPSTREAM { &counters.bytes_to_upstream } else { &counters.bytes_to_client };
        counter.fetch_add(chunk.data.len() as u64, Ordering::SeqCst);
    }
}

/// Counts a connection as active while it lives.
struct ActiveGuard(Arc<Shared>);

impl ActiveGuard {
    fn new(shared: Arc<Shared>) -> ActiveGuard {
        shared.counters.active.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(shared)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.counters.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait<'a, T>(cond: &Condvar, guard: MutexGuard<'a, T>, timeout: Duration) -> MutexGuard<'a, T> {
    match cond.wait_timeout(guard, timeout) {
        Ok((guard, _)) => guard,
        Err(e) => e.into_inner().0,
    }
}

/// SplitMix64: small, seedable, good enough for jitter.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Sets `SO_LINGER` to 0, so that closing the socket sends a RST instead of a FIN. Std has no
/// stable way; the constants are those of Linux on the common architectures. Elsewhere a no-op
/// (the close is then a plain FIN).
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64", target_arch = "arm", target_arch = "riscv64")
))]
fn set_linger_zero(stream: &TcpStream) {
    use std::os::raw::{c_int, c_void};
    use std::os::unix::io::AsRawFd;

    #[repr(C)]
    struct Linger {
        l_onoff: c_int,
        l_linger: c_int,
    }
    extern "C" {
        fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: u32) -> c_int;
    }
    const SOL_SOCKET: c_int = 1;
    const SO_LINGER: c_int = 13;
    let linger = Linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: the descriptor is open for the borrow's duration, and the value points at a live
    // `struct linger` of the length passed.
    let _ = unsafe {
        setsockopt(
            stream.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            &linger as *const Linger as *const c_void,
            std::mem::size_of::<Linger>() as u32,
        )
    };
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64", target_arch = "arm", target_arch = "riscv64")
)))]
fn set_linger_zero(_stream: &TcpStream) {}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: &str = "127.0.0.1:0";

    fn any_port() -> SocketAddr {
        LOOPBACK.parse().expect("loopback address")
    }

    /// An upstream that echoes every byte back and shuts its write half when the client does.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(LOOPBACK).expect("bind echo server");
        let addr = listener.local_addr().expect("echo server address");
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        match (&stream).read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if (&stream).write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                    let _ = stream.shutdown(Shutdown::Write);
                });
            }
        });
        addr
    }

    /// An upstream that reads and counts, never writes.
    fn sink_server() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind(LOOPBACK).expect("bind sink server");
        let addr = listener.local_addr().expect("sink server address");
        let count = Arc::new(AtomicU64::new(0));
        let total = Arc::clone(&count);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let total = Arc::clone(&total);
                thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        total.fetch_add(n as u64, Ordering::SeqCst);
                    }
                });
            }
        });
        (addr, count)
    }

    fn proxy_to(upstream: SocketAddr) -> FaultProxy {
        FaultProxy::start(any_port(), upstream, 7).expect("start proxy")
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to proxy");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        stream.set_write_timeout(Some(Duration::from_secs(5))).expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        stream
    }

    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = SplitMix64(seed);
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&rng.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn is_timeout(e: &io::Error) -> bool {
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
    }

    /// Sends `payload` and reads back as many bytes (with a deadline).
    fn round_trip(stream: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
        stream.write_all(payload).expect("write through proxy");
        let mut back = vec![0u8; payload.len()];
        stream.read_exact(&mut back).expect("read echo through proxy");
        back
    }

    /// Asserts that nothing arrives for `quiet` (the connection stays open and silent).
    fn assert_silent(stream: &mut TcpStream, quiet: Duration) {
        stream.set_read_timeout(Some(quiet)).expect("read timeout");
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Err(e) if is_timeout(&e) => {}
            Ok(0) => panic!("connection closed, expected it open and silent"),
            Ok(n) => panic!("{n} bytes arrived, expected none"),
            Err(e) => panic!("read failed ({e}), expected the connection open and silent"),
        }
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    }

    /// Asserts that the connection ends (EOF or an error) within `within`, skipping data.
    fn assert_closed(stream: &mut TcpStream, within: Duration) {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            stream.set_read_timeout(Some(left)).expect("read timeout");
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => assert!(Instant::now() < deadline, "connection still delivering data after {within:?}"),
                Err(e) if is_timeout(&e) => panic!("connection still open after {within:?}"),
                Err(_) => return,
            }
        }
    }

    #[test]
    fn pass_forwards_bytes_both_ways_exactly_and_propagates_half_close() {
        let proxy = proxy_to(echo_server());
        let mut stream = connect(proxy.local_addr());
        let data = random_bytes(1 << 20, 1);
        let writer = {
            let mut stream = stream.try_clone().expect("clone stream");
            let data = data.clone();
            thread::spawn(move || {
                stream.write_all(&data).expect("write 1 MiB");
                stream.shutdown(Shutdown::Write).expect("half-close");
            })
        };
        let mut back = Vec::new();
        stream.read_to_end(&mut back).expect("read the echo up to EOF");
        writer.join().expect("writer thread");
        assert_eq!(back.len(), data.len());
        assert!(back == data, "echoed bytes differ");
        wait_for("the connection to end", Duration::from_secs(2), || proxy.stats().active == 0);
        let stats = proxy.stats();
        assert_eq!(stats.accepted, 1);
        assert_eq!(stats.bytes_to_upstream, 1 << 20);
        assert_eq!(stats.bytes_to_client, 1 << 20);
        assert_eq!(stats.queued_bytes, 0);
    }

    #[test]
    fn delay_applies_in_both_directions() {
        let proxy = proxy_to(echo_server());
        let mut stream = connect(proxy.local_addr());
        assert_eq!(round_trip(&mut stream, b"warm"), b"warm");
        // Bounds far apart, so a loaded CI machine cannot blur them: a delayed round trip takes
        // at least 2 s, a passed one far less.
        proxy.set_mode(ProxyMode::Delay { delay_ms: 1_000, jitter_ms: 0 });
        assert_eq!(proxy.mode(), ProxyMode::Delay { delay_ms: 1_000, jitter_ms: 0 });
        let started = Instant::now();
        assert_eq!(round_trip(&mut stream, b"ping"), b"ping");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(2_000), "round trip took {elapsed:?}, expected >= 2 s");
        assert!(elapsed < Duration::from_secs(15), "round trip took {elapsed:?}, expected about 2 s");
        // Back to Pass: immediate again.
        proxy.set_mode(ProxyMode::Pass);
        let started = Instant::now();
        assert_eq!(round_trip(&mut stream, b"pong"), b"pong");
        assert!(started.elapsed() < Duration::from_millis(1_500), "Pass round trip took {:?}", started.elapsed());
    }

    #[test]
    fn delay_with_jitter_preserves_order() {
        let proxy = proxy_to(echo_server());
        proxy.set_mode(ProxyMode::Delay { delay_ms: 30, jitter_ms: 25 });
        let mut stream = connect(proxy.local_addr());
        const COUNT: u32 = 400;
        let writer = {
            let mut stream = stream.try_clone().expect("clone stream");
            thread::spawn(move || {
                for i in 0..COUNT {
                    let mut chunk = [0u8; 256];
                    for word in chunk.chunks_mut(4) {
                        word.copy_from_slice(&i.to_le_bytes());
                    }
                    stream.write_all(&chunk).expect("write numbered chunk");
                    if i % 8 == 0 {
                        thread::sleep(Duration::from_millis(1));
                    }
                }
            })
        };
        let mut back = vec![0u8; COUNT as usize * 256];
        stream.read_exact(&mut back).expect("read the numbered chunks back");
        writer.join().expect("writer thread");
        for (k, word) in back.chunks(4).enumerate() {
            let got = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            assert_eq!(got as usize, k / 64, "byte order broken at word {k}");
        }
    }

    #[test]
    fn delay_does_not_cap_throughput() {
        let proxy = proxy_to(echo_server());
        proxy.set_mode(ProxyMode::Delay { delay_ms: 50, jitter_ms: 0 });
        let mut stream = connect(proxy.local_addr());
        let data = random_bytes(32 << 20, 2);
        let started = Instant::now();
        let writer = {
            let mut stream = stream.try_clone().expect("clone stream");
            let data = data.clone();
            thread::spawn(move || stream.write_all(&data).expect("write 32 MiB"))
        };
        let mut back = vec![0u8; data.len()];
        stream.read_exact(&mut back).expect("read 32 MiB back");
        let elapsed = started.elapsed();
        writer.join().expect("writer thread");
        assert!(back == data, "echoed bytes differ");
        // One 64 KiB chunk per 50 ms each way would take over 50 s.
        assert!(elapsed < Duration::from_secs(20), "32 MiB through a 50 ms delay took {elapsed:?}");
        assert!(elapsed >= Duration::from_millis(100), "32 MiB round trip took {elapsed:?}, expected >= 100 ms");
    }

    #[test]
    fn stall_holds_bytes_until_pass() {
        let proxy = proxy_to(echo_server());
        let mut stream = connect(proxy.local_addr());
        assert_eq!(round_trip(&mut stream, b"before"), b"before");
        proxy.set_mode(ProxyMode::Stall);
        stream.write_all(b"held bytes").expect("write while stalled");
        assert_silent(&mut stream, Duration::from_millis(500));
        wait_for("the held bytes to be queued", Duration::from_secs(2), || proxy.stats().queued_bytes > 0);
        proxy.set_mode(ProxyMode::Pass);
        let started = Instant::now();
        let mut back = [0u8; 10];
        stream.read_exact(&mut back).expect("held bytes arrive after Pass");
        assert_eq!(&back, b"held bytes");
        assert!(started.elapsed() < Duration::from_secs(5), "held bytes took {:?} after Pass", started.elapsed());
        // A new connection made while stalled is held too, and flows after a switch to Delay.
        proxy.set_mode(ProxyMode::Stall);
        let mut other = connect(proxy.local_addr());
        other.write_all(b"new").expect("write on new connection while stalled");
        assert_silent(&mut other, Duration::from_millis(300));
        proxy.set_mode(ProxyMode::Delay { delay_ms: 10, jitter_ms: 5 });
        let mut back = [0u8; 3];
        other.read_exact(&mut back).expect("held bytes arrive after Delay");
        assert_eq!(&back, b"new");
        assert_eq!(proxy.stats().resets, 0);
    }

    #[test]
    fn stall_backpressure_bounds_the_queue() {
        let (upstream, received) = sink_server();
        let limits = ProxyLimits { max_connections: 8, max_queued_bytes: 1 << 20 };
        let proxy = FaultProxy::start_with_limits(any_port(), upstream, 3, limits).expect("start proxy");
        proxy.set_mode(ProxyMode::Stall);
        let stream = connect(proxy.local_addr());
        stream.set_write_timeout(Some(Duration::from_millis(300))).expect("write timeout");
        let chunk = vec![7u8; 64 << 10];
        let mut written = 0usize;
        let deadline = Instant::now() + Duration::from_secs(10);
        // Write until the writes block (the proxy stopped reading): far less than 256 MiB.
        loop {
            assert!(Instant::now() < deadline, "writes never blocked");
            match (&stream).write(&chunk) {
                Ok(n) => written += n,
                Err(e) if is_timeout(&e) => break,
                Err(e) => panic!("write failed: {e}"),
            }
            assert!(written < 256 << 20, "wrote {written} bytes into a stalled proxy");
        }
        let queued = proxy.stats().queued_bytes;
        assert!(queued <= (1 << 20) + (64 << 10), "queued {queued} bytes over a 1 MiB cap");
        assert_eq!(received.load(Ordering::SeqCst), 0);
        proxy.set_mode(ProxyMode::Pass);
        wait_for("everything written to arrive", Duration::from_secs(5), || received.load(Ordering::SeqCst) == written as u64);
    }

    #[test]
    fn reset_closes_open_connections_and_refuses_new_ones() {
        let proxy = proxy_to(echo_server());
        let mut stream = connect(proxy.local_addr());
        assert_eq!(round_trip(&mut stream, b"hello"), b"hello");
        proxy.set_mode(ProxyMode::Reset);
        assert_closed(&mut stream, Duration::from_secs(5));
        let mut fresh = connect(proxy.local_addr());
        assert_closed(&mut fresh, Duration::from_secs(5));
        wait_for("the reset connection to end", Duration::from_secs(2), || proxy.stats().active == 0);
        assert!(proxy.stats().resets >= 2, "stats: {:?}", proxy.stats());
        proxy.set_mode(ProxyMode::Pass);
        let mut again = connect(proxy.local_addr());
        assert_eq!(round_trip(&mut again, b"again"), b"again");
    }

    #[test]
    fn drop_accepts_writes_and_answers_nothing() {
        let proxy = proxy_to(echo_server());
        let mut open = connect(proxy.local_addr());
        assert_eq!(round_trip(&mut open, b"hello"), b"hello");
        proxy.set_mode(ProxyMode::Drop);
        let mut fresh = connect(proxy.local_addr());
        for stream in [&mut open, &mut fresh] {
            stream.write_all(&[1u8; 4096]).expect("write into a blackhole");
        }
        assert_silent(&mut open, Duration::from_millis(500));
        assert_silent(&mut fresh, Duration::from_millis(100));
        wait_for("the blackholed bytes to be discarded", Duration::from_secs(2), || proxy.stats().discarded_bytes >= 8192);
        assert_eq!(proxy.stats().bytes_to_upstream, 5);
        // Both streams lost bytes: back in Pass they are closed, and new connections work.
        proxy.set_mode(ProxyMode::Pass);
        assert_closed(&mut open, Duration::from_secs(5));
        assert_closed(&mut fresh, Duration::from_secs(5));
        let mut again = connect(proxy.local_addr());
        assert_eq!(round_trip(&mut again, b"again"), b"again");
    }

    #[test]
    fn unreachable_upstream_closes_the_client() {
        let dead = {
            let listener = TcpListener::bind(LOOPBACK).expect("bind");
            listener.local_addr().expect("address")
        };
        let proxy = proxy_to(dead);
        let mut stream = connect(proxy.local_addr());
        assert_closed(&mut stream, Duration::from_secs(3));
        wait_for("the failure to be counted", Duration::from_secs(2), || proxy.stats().upstream_failures == 1);
        assert_eq!(proxy.stats().active, 0);
    }

    #[test]
    fn connections_over_the_cap_are_closed() {
        let limits = ProxyLimits { max_connections: 2, max_queued_bytes: 1 << 20 };
        let proxy = FaultProxy::start_with_limits(any_port(), echo_server(), 5, limits).expect("start proxy");
        let mut a = connect(proxy.local_addr());
        let mut b = connect(proxy.local_addr());
        assert_eq!(round_trip(&mut a, b"a"), b"a");
        assert_eq!(round_trip(&mut b, b"b"), b"b");
        let mut c = connect(proxy.local_addr());
        assert_closed(&mut c, Duration::from_secs(5));
        assert_eq!(proxy.stats().rejected, 1);
        drop(a);
        wait_for("a slot to free up", Duration::from_secs(2), || proxy.stats().active == 1);
        let mut d = connect(proxy.local_addr());
        assert_eq!(round_trip(&mut d, b"d"), b"d");
    }

    #[test]
    fn shutdown_is_prompt_with_idle_connections() {
        let proxy = proxy_to(echo_server());
        let addr = proxy.local_addr();
        let mut streams: Vec<TcpStream> = (0..5).map(|_| connect(addr)).collect();
        for s in &mut streams {
            assert_eq!(round_trip(s, b"x"), b"x");
        }
        proxy.set_mode(ProxyMode::Stall);
        streams[0].write_all(b"held").expect("write while stalled");
        let started = Instant::now();
        proxy.shutdown();
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(6), "shutdown took {elapsed:?}");
        assert!(lock(&proxy.shared.threads).is_empty(), "threads left after shutdown");
        assert_eq!(proxy.stats().active, 0);
        for s in &mut streams {
            assert_closed(s, Duration::from_secs(5));
        }
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "still accepting after shutdown");
        proxy.shutdown();
    }

    #[test]
    fn proxy_set_manages_pairs() {
        let set = ProxySet::new(11);
        let addr12 = set.add(1, 2, any_port(), echo_server()).expect("add 1->2");
        let addr13 = set.add(1, 3, any_port(), echo_server()).expect("add 1->3");
        let duplicate = set.add(1, 2, any_port(), echo_server());
        assert_eq!(duplicate.err().map(|e| e.kind()), Some(ErrorKind::AlreadyExists));
        assert_eq!(set.pairs(), vec![(1, 2), (1, 3)]);
        assert_eq!(set.get((1, 2)).map(|p| p.local_addr()), Some(addr12));
        assert!(set.get((2, 1)).is_none());
        assert!(!set.set_mode((2, 1), ProxyMode::Stall));

        let mut s12 = connect(addr12);
        let mut s13 = connect(addr13);
        assert!(set.set_mode((1, 2), ProxyMode::Stall));
        assert_eq!(set.get((1, 2)).map(|p| p.mode()), Some(ProxyMode::Stall));
        assert_eq!(set.get((1, 3)).map(|p| p.mode()), Some(ProxyMode::Pass));
        s12.write_all(b"12").expect("write 1->2");
        assert_eq!(round_trip(&mut s13, b"13"), b"13");
        assert_silent(&mut s12, Duration::from_millis(300));

        set.set_all(ProxyMode::Delay { delay_ms: 5, jitter_ms: 0 });
        let mut back = [0u8; 2];
        s12.read_exact(&mut back).expect("1->2 flows again");
        assert_eq!(&back, b"12");
        assert_eq!(set.get((1, 3)).map(|p| p.mode()), Some(ProxyMode::Delay { delay_ms: 5, jitter_ms: 0 }));

        set.set_node(3, ProxyMode::Stall);
        assert_eq!(set.get((1, 3)).map(|p| p.mode()), Some(ProxyMode::Stall));
        assert_eq!(set.get((1, 2)).map(|p| p.mode()), Some(ProxyMode::Delay { delay_ms: 5, jitter_ms: 0 }));
        assert_eq!(set.stats().len(), 2);

        let started = Instant::now();
        set.shutdown_all();
        assert!(started.elapsed() < Duration::from_secs(6), "shutdown_all took {:?}", started.elapsed());
        assert!(set.pairs().is_empty());
        assert!(set.get((1, 2)).is_none());
        assert_closed(&mut s12, Duration::from_secs(5));
        assert_closed(&mut s13, Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_within_bounds_and_due_times_never_go_back() {
        let proxy = proxy_to(echo_server());
        let mode = ProxyMode::Delay { delay_ms: 100, jitter_ms: 40 };
        let mut previous = None;
        for _ in 0..1000 {
            let before = Instant::now();
            let due = proxy.shared.due(&mode, None);
            let after = Instant::now();
            assert!(due >= before + Duration::from_millis(60) && due <= after + Duration::from_millis(140));
            let ordered = proxy.shared.due(&mode, previous);
            if let Some(p) = previous {
                assert!(ordered >= p);
            }
            previous = Some(ordered);
        }
    }
}
