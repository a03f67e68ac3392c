// The API key: entered once per browser session (sessionStorage), asked for again on a 401.

const STORAGE_KEY = "creme.apiKey";
let pending = null; // one prompt at a time, shared by every request that got a 401
let declined = false; // the user cancelled the prompt: background refreshes do not reopen it

export function storedKey() {
  return sessionStorage.getItem(STORAGE_KEY);
}

function forgetKey() {
  sessionStorage.removeItem(STORAGE_KEY);
  updateButton();
}

function updateButton() {
  const button = document.getElementById("key-button");
  if (!button) return;
  const key = storedKey();
  button.textContent = key ? `API key ${key.slice(0, 12)}…` : "API key";
}

/** Show the key dialog; resolves true when a key was entered, false when the user cancelled or forgot it. */
export function askForKey(reason) {
  if (pending) return pending;
  if (declined) return Promise.resolve(false);
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-reason").textContent = reason || "Enter an API key for this service.";
  input.value = "";
  pending = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        pending = null;
        const value = input.value.trim();
        if (dialog.returnValue === "save" && value) {
          sessionStorage.setItem(STORAGE_KEY, value);
          updateButton();
          resolve(true);
          return;
        }
        if (dialog.returnValue === "forget") forgetKey();
        declined = true;
        resolve(false);
      },
      { once: true },
    );
  });
  dialog.returnValue = "";
  dialog.showModal();
  input.focus();
  return pending;
}

/** Let the next 401 open the prompt again (after the user moved to another page). */
export function allowKeyPrompt() {
  declined = false;
}

/** Wire the header's key button: it opens the dialog, and reloads the view after a change. */
export function installKeyButton(onChange) {
  updateButton();
  document.getElementById("key-button").addEventListener("click", async () => {
    const before = storedKey();
    declined = false;
    await askForKey(before ? "This tab uses the key shown; enter another one or forget it." : undefined);
    if (storedKey() !== before) onChange();
  });
}
