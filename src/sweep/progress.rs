//! What a sweep shows while it runs: indicatif bars (overall runs; the current run's steps with loss, tokens/s
//! and ETA), plain lines (`--quiet`, and whenever stderr is not a terminal), or JSON lines on stdout
//! (`--log-format json`) for batch jobs.

use super::run::RunSummary;
use crate::eval::HeldoutResult;
use crate::train::StepMetrics;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::io::IsTerminal;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Quiet,
    Json,
}

pub struct Progress {
    mode: Mode,
    multi: MultiProgress,
    overall: ProgressBar,
    run: Option<ProgressBar>,
    run_started: Instant,
    run_tokens: usize,
}

impl Progress {
    pub fn new(mode: Mode, total_runs: usize) -> Self {
        let visible = mode == Mode::Bars && std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
        let overall = multi.add(ProgressBar::new(total_runs as u64));
        overall.set_style(ProgressStyle::with_template("runs [{bar:30}] {pos}/{len} {elapsed_precise} {msg}").expect("valid template"));
        Self { mode, multi, overall, run: None, run_started: Instant::now(), run_tokens: 0 }
    }

    /// A line for the user: above the bars, on stderr, unless the mode is JSON (then it is an event).
    pub fn message(&self, text: &str) {
        match self.mode {
            Mode::Json => self.event(json!({ "event": "message", "text": text })),
            _ if self.multi.is_hidden() => eprintln!("{text}"),
            _ => self.multi.suspend(|| eprintln!("{text}")),
        }
    }

    fn event(&self, value: serde_json::Value) {
        println!("{value}");
    }

    pub fn run_started(&mut self, name: &str, total_steps: usize, done_steps: usize) {
        self.run_started = Instant::now();
        self.run_tokens = 0;
        if self.mode == Mode::Json {
            self.event(json!({ "event": "run_start", "run": name, "total_steps": total_steps, "resumed_at": done_steps }));
            return;
        }
        if self.multi.is_hidden() && self.mode == Mode::Bars {
            let resumed = if done_steps > 0 { format!(", resuming after step {done_steps}") } else { String::new() };
            eprintln!("{name}: {total_steps} steps{resumed}");
        }
        let bar = self.multi.add(ProgressBar::new(total_steps as u64));
        bar.set_style(ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} loss {msg} eta {eta}").expect("valid template"));
        bar.set_prefix(name.to_string());
        bar.set_position(done_steps as u64);
        bar.reset_eta();
        self.run = Some(bar);
    }

    pub fn step(&mut self, name: &str, m: &StepMetrics) {
        self.run_tokens += m.input_tokens;
        let tps = self.run_tokens as f64 / self.run_started.elapsed().as_secs_f64().max(1e-9);
        if self.mode == Mode::Json {
            self.event(json!({ "event": "step", "run": name, "metrics": m, "tokens_per_s": tps }));
        } else if let Some(bar) = &self.run {
            bar.set_message(format!("{:.4}  {:.0} tok/s", m.loss, tps));
            bar.inc(1);
        }
    }

    pub fn eval(&self, name: &str, step: usize, r: &HeldoutResult) {
        if self.mode == Mode::Json {
            self.event(json!({ "event": "eval", "run": name, "step": step, "heldout": r }));
        } else if self.mode == Mode::Bars {
            let langs: Vec<String> = r.languages.iter().filter(|(l, _)| !l.is_empty()).map(|(l, x)| format!("{l} {:.2}", x.perplexity)).collect();
            let langs = if langs.len() > 1 { format!(" [{}]", langs.join(", ")) } else { String::new() };
            self.message(&format!("{name}: step {step}: held-out loss {:.4}, perplexity {:.2}{langs}", r.loss, r.perplexity));
        }
    }

    fn end_run_bar(&mut self) {
        if let Some(bar) = self.run.take() {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        self.overall.inc(1);
    }

    pub fn run_finished(&mut self, s: &RunSummary) {
        self.end_run_bar();
        if self.mode == Mode::Json {
            self.event(json!({ "event": "run_end", "summary": s }));
            return;
        }
        let held = s.heldout.as_ref().map(|h| format!(", held-out loss {:.4} (perplexity {:.2})", h.loss, h.perplexity)).unwrap_or_default();
        let best = s.best.as_ref().filter(|_| s.keep == "best").map(|b| format!(" from step {} (epoch {})", b.step, b.epoch)).unwrap_or_default();
        self.message(&format!("{}: {} steps, final loss {:.4}{held}; adapter{best} in {}/adapter", s.run, s.steps, s.final_loss, s.run));
    }

    pub fn run_failed(&mut self, name: &str, error: &str) {
        self.end_run_bar();
        match self.mode {
            Mode::Json => self.event(json!({ "event": "run_failed", "run": name, "error": error })),
            _ => self.message(&format!("{name}: FAILED: {error}")),
        }
    }

    pub fn run_skipped(&mut self, name: &str, why: &str) {
        self.overall.inc(1);
        match self.mode {
            Mode::Json => self.event(json!({ "event": "run_skipped", "run": name, "why": why })),
            _ => self.message(&format!("{name}: skipped ({why})")),
        }
    }

    pub fn finish(&self) {
        self.overall.finish_and_clear();
    }
}
