//! Stage-by-stage progress on the terminal (indicatif), plain lines when
//! stderr is not a terminal, and the time each stage took.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// How long one stage took (the build summary lists them).
#[derive(Debug, Serialize, Clone)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
}

pub struct Progress {
    visible: bool,
    current: RefCell<Option<ProgressBar>>,
    times: RefCell<Vec<StageTime>>,
}

impl Progress {
    pub fn new(visible: bool) -> Self {
        Self {
            visible,
            current: RefCell::new(None),
            times: RefCell::new(Vec::new()),
        }
    }

    /// Runs one stage with a spinner and records its time.
    pub fn stage<T, E>(&self, name: &str, work: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let started = Instant::now();
        let bar = if self.visible {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:<11} {elapsed:>4} {wide_msg}")
                .expect("valid template"),
        );
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        *self.current.borrow_mut() = Some(bar.clone());
        let result = work();
        let seconds = started.elapsed().as_secs_f64();
        let mark = if result.is_ok() { "done" } else { "FAILED" };
        bar.finish_and_clear();
        *self.current.borrow_mut() = None;
        if self.visible {
            eprintln!("  {name:<11} {seconds:>6.1}s {mark}");
        }
        self.times.borrow_mut().push(StageTime {
            stage: name.to_string(),
            seconds,
        });
        result
    }

    /// A short message on the running stage's line.
    pub fn note(&self, message: &str) {
        log::info!("{message}");
        if let Some(bar) = self.current.borrow().as_ref() {
            bar.set_message(message.to_string());
        }
    }

    pub fn times(&self) -> Vec<StageTime> {
        self.times.borrow().clone()
    }
}
