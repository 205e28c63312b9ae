//! The web page at `/` in a real browser: Debian's headless Chromium driven
//! through ChromeDriver (WebDriver) by fantoccini. Types a prompt, presses
//! Generate, waits for the image and the gallery, then checks that an API
//! error shows beside the field it names. `scripts/test.sh` installs
//! chromium and chromium-driver when they are missing; without them this
//! test fails (it is never skipped).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::scratch;
use common::server::Served;
use fantoccini::{ClientBuilder, Locator};

const PROMPT: &str = "a large blue square on a white background";

/// ChromeDriver on a free port; killed when dropped.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_driver() -> Driver {
    let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(&binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {binary} ({e}): install chromium and chromium-driver (scripts/test.sh does)")
        });
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver(child, port)
}

fn capabilities(profile: &std::path::Path) -> serde_json::Map<String, serde_json::Value> {
    // Without the background-networking flags Chromium keeps trying hosts
    // this offline machine cannot reach.
    let options = serde_json::json!({
        "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync",
            format!("--user-data-dir={}", profile.display()),
        ],
    });
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    caps
}

#[tokio::test(flavor = "current_thread")]
async fn the_page_generates_shows_the_gallery_and_names_bad_fields() {
    let dir = scratch("browser", "page");
    let server = Served::start(&dir.join("data"), &[]);
    let driver = start_driver();
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let browser = ClientBuilder::new(connector)
        .capabilities(capabilities(&dir.join("profile")))
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("a Chromium session");
    // Spawned, so that a failed assertion comes back as a JoinError and the
    // browser is still closed (else Chromium outlives the test).
    let (client, url) = (browser.clone(), server.url.clone());
    let result = tokio::spawn(async move { drive(&client, &url).await }).await;
    let _ = browser.close().await;
    match result {
        Ok(outcome) => outcome.unwrap(),
        Err(panic) => std::panic::resume_unwind(panic.into_panic()),
    }
}

/// The history shows prompt, size, seed and sampler, opens the full
/// parameters, and links the stored PNG, which carries them.
async fn check_history_entry(
    browser: &fantoccini::Client,
    wait: Duration,
) -> Result<(), fantoccini::error::CmdError> {
    let facts = browser.find(Locator::Css("#gallery .facts")).await?;
    let start = Instant::now();
    while !facts.text().await?.starts_with("32x32") {
        assert!(start.elapsed() < wait, "size: {:?}", facts.text().await?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(facts.text().await?, "32x32, seed 5, DDIM");
    let prompt = browser.find(Locator::Css("#gallery .prompt")).await?;
    assert_eq!(prompt.text().await?, PROMPT);
    browser
        .find(Locator::Css("#gallery summary"))
        .await?
        .click()
        .await?;
    let text = browser
        .find(Locator::Css("#gallery pre"))
        .await?
        .text()
        .await?;
    assert!(
        text.starts_with(PROMPT)
            && text.contains(
                "Steps: 4, Sampler: DDIM, CFG scale: 7, Seed: 5, Size: 32x32, Model: shapes"
            ),
        "{text}"
    );
    let link = browser.find(Locator::Css("#gallery a[download]")).await?;
    let href = link.attr("href").await?.unwrap_or_default();
    let png = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0]).then(r => r.arrayBuffer())
               .then(b => done(new TextDecoder('latin1').decode(b)));",
            vec![serde_json::json!(href)],
        )
        .await?;
    let png = png.as_str().unwrap_or_default();
    assert!(
        png.contains("IHDR") && png.contains("parameters") && png.contains("Seed: 5"),
        "the stored PNG carries its parameters"
    );
    let download = browser.find(Locator::Id("result-download")).await?;
    assert!(download.is_displayed().await?, "the result is downloadable");
    Ok(())
}

async fn drive(browser: &fantoccini::Client, url: &str) -> Result<(), fantoccini::error::CmdError> {
    browser.goto(url).await?;
    let wait = Duration::from_secs(120);

    // 0. before any run: placeholders, no broken-image icons
    for (image, placeholder) in [
        ("preview", "preview-placeholder"),
        ("result-image", "result-placeholder"),
    ] {
        let shown = |id| async move { browser.find(Locator::Id(id)).await?.is_displayed().await };
        assert!(
            !shown(image).await?,
            "{image} hidden until it has a picture"
        );
        assert!(shown(placeholder).await?, "{placeholder} shown instead");
    }

    // 1. a prompt, few steps, a fixed seed; Generate
    browser
        .find(Locator::Id("prompt"))
        .await?
        .send_keys(PROMPT)
        .await?;
    let steps = browser.find(Locator::Id("steps")).await?;
    steps.clear().await?;
    steps.send_keys("4").await?;
    let seed = browser.find(Locator::Id("seed")).await?;
    seed.clear().await?;
    seed.send_keys("5").await?;
    browser.find(Locator::Id("generate")).await?.click().await?;

    // 2. the image appears, and the gallery lists it from the history
    let thumbnail = browser
        .wait()
        .at_most(wait)
        .for_element(Locator::Css("#gallery img"))
        .await?;
    let alt = thumbnail.attr("alt").await?.unwrap_or_default();
    assert_eq!(alt, PROMPT, "the gallery's image is this prompt's");
    let result = browser.find(Locator::Id("result-image")).await?;
    let src = result.attr("src").await?.unwrap_or_default();
    assert!(
        src.starts_with("data:image/png;base64,"),
        "result image: {src:.40}"
    );
    assert_eq!(
        browser.find_all(Locator::Css("#gallery img")).await?.len(),
        1
    );
    let progress = browser
        .execute("return document.getElementById('progress').value", vec![])
        .await?;
    assert_eq!(progress, serde_json::json!(1), "the bar ends full");
    check_history_entry(browser, wait).await?;

    // 3. steps past the server's limit: the API's message beside "Steps"
    steps.clear().await?;
    steps.send_keys("1000").await?;
    browser.find(Locator::Id("generate")).await?.click().await?;
    let error = browser.find(Locator::Id("err-steps")).await?;
    let start = Instant::now();
    let text = loop {
        let text = error.text().await?;
        if !text.is_empty() || start.elapsed() > wait {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        text.starts_with("steps: 1000"),
        "error beside the field: {text:?}"
    );
    assert_eq!(
        browser
            .find(Locator::Id("err-general"))
            .await?
            .text()
            .await?,
        ""
    );
    assert_eq!(steps.attr("aria-invalid").await?.as_deref(), Some("true"));
    assert_eq!(
        browser.find_all(Locator::Css("#gallery img")).await?.len(),
        1,
        "no new image"
    );

    // 4. from the keyboard alone: fix the field, Enter submits the form
    steps.clear().await?;
    let enter: char = fantoccini::key::Key::Enter.into();
    steps.send_keys(&format!("3{enter}")).await?;
    let start = Instant::now();
    while browser.find_all(Locator::Css("#gallery img")).await?.len() < 2 {
        assert!(start.elapsed() < wait, "Enter in a field did not generate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(error.text().await?, "", "the error clears on the next try");

    // 5. hires fix: the section lists the latent modes and the resizers;
    // doubling the shapes model's 32x32 gives a 64x64 image
    check_hires(browser, wait).await
}

async fn check_hires(
    browser: &fantoccini::Client,
    wait: Duration,
) -> Result<(), fantoccini::error::CmdError> {
    browser
        .find(Locator::Css("#hires summary"))
        .await?
        .click()
        .await?;
    let options = browser
        .execute(
            "return [...document.querySelectorAll('#hr_upscaler option')].map(o => o.value)",
            vec![],
        )
        .await?;
    let options: Vec<String> = serde_json::from_value(options).unwrap_or_default();
    assert!(
        options.starts_with(&["Latent".to_string()])
            && options.contains(&"Latent (nearest-exact)".to_string())
            && options.contains(&"Lanczos".to_string())
            && !options.contains(&"None".to_string()),
        "{options:?}"
    );
    browser
        .find(Locator::Id("enable_hr"))
        .await?
        .click()
        .await?;
    let hr_steps = browser.find(Locator::Id("hr_second_pass_steps")).await?;
    hr_steps.clear().await?;
    hr_steps.send_keys("2").await?;
    browser.find(Locator::Id("generate")).await?.click().await?;
    let start = Instant::now();
    while browser.find_all(Locator::Css("#gallery img")).await?.len() < 3 {
        assert!(start.elapsed() < wait, "the hires run did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let size = loop {
        let size = browser
            .execute(
                "const img = document.getElementById('result-image');
                 return img.complete ? img.naturalWidth + 'x' + img.naturalHeight : '';",
                vec![],
            )
            .await?;
        if size != serde_json::json!("") || start.elapsed() > wait {
            break size;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(size, serde_json::json!("64x64"), "hires doubles the size");
    Ok(())
}
