// End-to-end run of the `pixellm serve` page in headless Chromium (driven by
// tests/test_serve_browser.py, which starts the server and checks the JSON printed here).
//
// usage: node serve_e2e.mjs URL GOOD_IMAGE CORRUPT_FILE OVERSIZED_FILE NON_IMAGE_FILE
// Steps: ask about GOOD_IMAGE; upload the corrupt and the oversized file and ask; try to upload
// the non-image (refused by the file-type filter); ask about GOOD_IMAGE again.
// Prints one JSON object: {steps: [{file, status, answerHtml, overlay: {width, height, colours}}],
// rejected: {file, toast}} or {error}.
import { chromium } from 'playwright-core';

const [url, good, corrupt, oversized, nonImage] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const TIMEOUT = 60000;

// Our status line only (the #status block also holds gradio's progress tracker).
const STATUS = '#status .pixellm-status';

async function statusText(page) {
  const el = page.locator(STATUS);
  return (await el.count()) ? (await el.first().innerText()).trim() : '';
}

// The file input of the upload box; after an upload it is replaced by the file preview, so
// clear the previous file first.
async function uploadInput(page) {
  const input = page.locator('#upload input[type=file]');
  if (!(await input.count())) {
    await page.locator('#upload button[aria-label="Clear"]').first().click();
    await input.waitFor({ state: 'attached', timeout: TIMEOUT });
  }
  return input;
}

// Upload `file`, ask `question`, wait until the status line changes, and read the outputs.
async function ask(page, file, question, marker) {
  await uploadInput(page).then((input) => input.setInputFiles(file));
  // the file name shows up once gradio has uploaded it to the server
  const name = file.split('/').pop();
  await page.locator(`#upload td.filename[aria-label="${name}"]`).waitFor({ timeout: TIMEOUT });
  await page.locator('#question textarea').fill(`${question} ${marker}`);
  const before = await statusText(page);
  await page.locator('#ask').click();
  await page.waitForFunction(
    ([sel, prev]) => {
      const s = document.querySelector(sel);
      const t = s ? s.innerText.trim() : '';
      return t && t !== prev;
    },
    [STATUS, before],
    { timeout: TIMEOUT },
  );
  const status = await statusText(page);
  const answer = page.locator('#answer .pixellm-answer');
  const answerHtml = (await answer.count()) ? await answer.first().innerHTML() : '';
  const overlay = await page.evaluate(async () => {
    const img = document.querySelector('#overlay img');
    if (!img || !img.src) return null;
    await img.decode().catch(() => {});
    const c = document.createElement('canvas');
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const data = ctx.getImageData(0, 0, c.width, c.height).data;
    const colours = new Set();
    for (let i = 0; i < data.length; i += 4) colours.add(`${data[i]},${data[i + 1]},${data[i + 2]}`);
    return { width: c.width, height: c.height, colours: [...colours].slice(0, 5000) };
  });
  return { file: name, status, answerHtml, overlay };
}

// A file the picker's type filter refuses: gradio shows an error toast and uploads nothing.
async function rejectedUpload(page, file) {
  await uploadInput(page).then((input) => input.setInputFiles(file));
  const toast = page.getByText(/Invalid file type/).first();
  await toast.waitFor({ timeout: TIMEOUT });
  return { file: file.split('/').pop(), toast: (await toast.innerText()).trim() };
}

let result;
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(TIMEOUT);
  await page.goto(url, { waitUntil: 'networkidle', timeout: TIMEOUT });
  const steps = [];
  // a varying marker keeps consecutive identical requests distinguishable in the status line
  steps.push(await ask(page, good, 'Where can I sit?', 1));
  for (const [i, bad] of [corrupt, oversized].entries()) {
    steps.push(await ask(page, bad, 'Where can I sit?', i + 2));
  }
  const rejected = await rejectedUpload(page, nonImage);
  steps.push(await ask(page, good, 'Where can I sit now?', 4));
  result = { steps, rejected };
} catch (err) {
  result = { error: String(err && err.stack ? err.stack : err) };
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
