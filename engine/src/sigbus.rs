//! A message instead of a silent death when a memory-mapped checkpoint goes away under us.
//!
//! A mapped file that is truncated (or whose storage fails) while mapped turns the next read of
//! a vanished page into `SIGBUS`, whose default action kills the process without a word. While
//! any checkpoint is mapped, a handler catches a fault inside one of the maps, names that file
//! on stderr and exits with status 135 (128 + SIGBUS, what a shell reports for a death by that
//! signal). A fault anywhere else goes to the action that was there before (the Rust runtime's
//! stack-overflow handler, a host's own), or, where that was the default, kills the process as
//! before, after a line naming the mapped files. `--no-mmap` avoids the hazard altogether.
//!
//! The handler may only make async-signal-safe calls: it reads messages formatted beforehand
//! (published through an atomic pointer, never freed, so the handler never sees one change or
//! go away), then calls `write(2)` and `_exit(2)`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Mutex;

/// What the handler writes: one message per mapped range, and one for a fault elsewhere.
struct Snapshot {
    ranges: Vec<(usize, usize, Vec<u8>)>,
    elsewhere: Vec<u8>,
}

static SNAPSHOT: AtomicPtr<Snapshot> = AtomicPtr::new(std::ptr::null_mut());
/// id → (path, start address, length) of every live mapping.
static MAPPED: Mutex<BTreeMap<u64, (PathBuf, usize, usize)>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A mapped checkpoint file known to the handler until this is dropped (with the map).
#[derive(Debug)]
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        let mut m = MAPPED.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(&self.0);
        publish(&m);
    }
}

/// Records that `bytes` map `path`, and installs the handler if this is the first mapping.
pub fn register(path: &Path, bytes: &[u8]) -> Registration {
    install();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut m = MAPPED.lock().unwrap_or_else(|e| e.into_inner());
    m.insert(
        id,
        (path.to_path_buf(), bytes.as_ptr() as usize, bytes.len()),
    );
    publish(&m);
    Registration(id)
}

const ADVICE: &str = "the file was truncated or its storage failed while mapped; load with \
                      --no-mmap (LoadOptions::no_mmap) to read checkpoints into memory instead";

fn publish(m: &BTreeMap<u64, (PathBuf, usize, usize)>) {
    let ranges = m
        .values()
        .map(|(path, start, len)| {
            let msg = format!(
                "\nerror: bus error (SIGBUS) reading the memory-mapped checkpoint {}: {ADVICE}\n",
                path.display()
            );
            (*start, *len, msg.into_bytes())
        })
        .collect();
    let names: Vec<String> = m
        .values()
        .map(|(p, _, _)| p.display().to_string())
        .collect();
    let elsewhere = if names.is_empty() {
        "\nerror: bus error (SIGBUS)\n".to_string()
    } else {
        format!(
            "\nerror: bus error (SIGBUS), likely reading a memory-mapped checkpoint (mapped: {}): \
             {ADVICE}\n",
            names.join(", ")
        )
    };
    let snap = Box::into_raw(Box::new(Snapshot {
        ranges,
        elsewhere: elsewhere.into_bytes(),
    }));
    // The previous snapshot is leaked on purpose: a handler running on another thread may be
    // reading it right now. A few hundred bytes per load or unload.
    SNAPSHOT.store(snap, Ordering::Release);
}

/// The SIGBUS action before ours: faults outside our maps go to it (the Rust runtime's
/// stack-overflow handler, a host's handler).
#[cfg(unix)]
static PREVIOUS: std::sync::OnceLock<libc::sigaction> = std::sync::OnceLock::new();

#[cfg(unix)]
fn write_all_stderr(mut rest: &[u8]) {
    while !rest.is_empty() {
        // SAFETY: a valid buffer of `rest.len()` bytes.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            break;
        }
        rest = &rest[n as usize..];
    }
}

#[cfg(unix)]
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO; a snapshot, once published, is
    // never freed or changed. Only write(2), _exit(2), sigaction(2) and the previous handler are
    // called, the first three async-signal-safe.
    unsafe {
        let addr = if info.is_null() {
            0
        } else {
            (*info).si_addr() as usize
        };
        let snap = SNAPSHOT.load(Ordering::Acquire).as_ref();
        if let Some(s) = snap {
            if let Some((_, _, msg)) = s
                .ranges
                .iter()
                .find(|(start, len, _)| addr >= *start && addr - *start < *len)
            {
                write_all_stderr(msg);
                libc::_exit(135);
            }
        }
        // Not in a map of ours: what would have happened without us.
        match PREVIOUS.get() {
            Some(prev)
                if prev.sa_sigaction != libc::SIG_DFL && prev.sa_sigaction != libc::SIG_IGN =>
            {
                if prev.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(prev.sa_sigaction);
                    f(sig, info, ctx);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(prev.sa_sigaction);
                    f(sig);
                }
            }
            _ => {
                // The default action (death by SIGBUS) follows when the faulting instruction
                // runs again; say first which mapped files may be at fault.
                if let Some(s) = snap {
                    write_all_stderr(&s.elsewhere);
                }
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            }
        }
    }
}

/// Installs the handler once, keeping the previous action for faults outside our maps.
fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    #[cfg(unix)]
    ONCE.call_once(|| {
        // SAFETY: sigaction with valid pointers to zeroed (then filled) structs; every return
        // code is checked, and on a failure the handler is not installed.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
                return;
            }
            let _ = PREVIOUS.set(old);
            let mut sa: libc::sigaction = std::mem::zeroed();
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                on_sigbus;
            sa.sa_sigaction = handler as libc::sighandler_t;
            // SA_ONSTACK: the Rust runtime gives each thread an alternate signal stack, which a
            // fault on a full stack needs.
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            if libc::sigemptyset(&mut sa.sa_mask) != 0 {
                return;
            }
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    });
}
