// "Copy" buttons next to a secret shown once: <button data-copy="element-id">. No framework.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const secret = document.getElementById(button.dataset.copy);
  const status = document.getElementById(button.dataset.copy + "-copied");
  window.getSelection().selectAllChildren(secret);  // selected either way, for Ctrl+C
  let copied = false;
  try {
    await navigator.clipboard.writeText(secret.textContent.trim());
    copied = true;
  } catch (err) {
    copied = document.execCommand("copy");  // no clipboard API (plain http on another host)
  }
  status.textContent = copied ? "Copied to the clipboard." : "Selected: copy it with Ctrl+C (⌘C).";
});
