// "Copy" buttons next to a secret shown once: <button data-copy="input-id">. No framework.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const input = document.getElementById(button.dataset.copy);
  const status = document.getElementById(button.dataset.copy + "-copied");
  input.select();
  let copied = false;
  try {
    await navigator.clipboard.writeText(input.value);
    copied = true;
  } catch (err) {
    copied = document.execCommand && document.execCommand("copy");  // no clipboard API (plain http)
  }
  status.textContent = copied ? "Copied to the clipboard." : "Select the text and copy it (Ctrl+C / ⌘C).";
});
