// Periodic refresh that stops when the view goes away and rests while the tab is hidden.

/**
 * Run `task` every `ms` milliseconds (counted from the end of the previous run) until `signal` aborts.
 * The first run is `ms` from now: a view loads its data itself first. Errors go to `onError`.
 */
export function every(ms, task, signal, onError = () => {}) {
  let timer = null;
  const tick = async () => {
    if (signal.aborted) return;
    if (!document.hidden) {
      try {
        await task();
      } catch (error) {
        if (!signal.aborted) onError(error);
      }
    }
    if (!signal.aborted) timer = setTimeout(tick, ms);
  };
  signal.addEventListener("abort", () => clearTimeout(timer), { once: true });
  timer = setTimeout(tick, ms);
}

/** Resolve after `ms` milliseconds, or at once when `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });
}
