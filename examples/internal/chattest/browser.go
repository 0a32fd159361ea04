package chattest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Chromium is the browser Browser drives; without it Browser skips, except
// under CI (CI set), where .ci/run installs it and a skip would hide a
// failure.
const Chromium = "/usr/bin/chromium"

// Browser drives the page in headless Chromium: a message posted from one
// tab (on /ws/sync of s1) appears in a second tab (on /ws/async of s2,
// another instance sharing the rooms) through the websocket, and again,
// from the history, after a reload. It saves a screenshot under
// t.TempDir() and, on failure, logs the browser console.
func Browser(t *testing.T, s1, s2 *Server) {
	if _, err := os.Stat(Chromium); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("no Chromium at %s under CI: .ci/run should have installed it: %v", Chromium, err)
		}
		t.Skipf("no Chromium at %s, skipping the browser test (Debian/Ubuntu: apt-get install chromium): %v", Chromium, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(Chromium),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
	)
	defer cancelAlloc()

	var console consoleLog
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("browser console:\n%s", console.String())
		}
	})
	defer console.wait() // after the tabs close, which ends the collection
	tab1, closeTab1 := chromedp.NewContext(alloc)
	defer closeTab1()
	console.collect(tab1, "tab 1")
	tab2, closeTab2 := chromedp.NewContext(tab1) // a second tab, same browser
	defer closeTab2()
	console.collect(tab2, "tab 2")

	const live = chromedp.CSS(`#status[data-state="live"]`)
	text := fmt.Sprintf("hello from tab 1 at %d", time.Now().UnixNano())
	sent := fmt.Sprintf(`//li[span[@class="body"][text()=%q]]`, text)
	do := func(tab context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(tab, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	do(tab1, "load the page on /ws/sync of instance 1", chromedp.Navigate(s1.URL+"/?ws=sync&room=browser"), chromedp.WaitVisible(live))
	do(tab2, "load the page on /ws/async of instance 2", chromedp.Navigate(s2.URL+"/?ws=async&room=browser"), chromedp.WaitVisible(live))
	do(tab1, "post from the page",
		chromedp.SendKeys(chromedp.CSS("#author"), "alice"),
		chromedp.SendKeys(chromedp.CSS("#body"), text),
		chromedp.Click(chromedp.CSS(`#send button`)),
		chromedp.WaitVisible(sent))
	do(tab2, "see it pushed to the second tab, on the other instance", chromedp.WaitVisible(sent))
	do(tab2, "see it in the history after a reload",
		chromedp.Reload(),
		chromedp.WaitVisible(live),
		chromedp.WaitVisible(sent))

	author, err := chromedp.Run(tab2, chromedp.Text(sent+`/span[@class="author"]`))
	if err != nil || author != "alice" {
		t.Errorf("author shown: %q, %v; want alice", author, err)
	}
	png, err := chromedp.Run(tab2, chromedp.FullScreenshot(100)) // 100: PNG; below, JPEG
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	shot := filepath.Join(t.TempDir(), "chat.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", shot, len(png))
}

// consoleLog collects what the pages log and throw, for failed tests.
type consoleLog struct {
	mu    sync.Mutex
	lines []string
	wg    sync.WaitGroup
}

// collect reads the console of tab until the tab is closed.
func (l *consoleLog) collect(tab context.Context, name string) {
	msgs := chromedp.Console(tab)
	l.wg.Go(func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			l.mu.Lock()
			l.lines = append(l.lines, name+": "+m.String())
			l.mu.Unlock()
		}
	})
}

// wait waits until the tabs are closed and their consoles read.
func (l *consoleLog) wait() { l.wg.Wait() }

func (l *consoleLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) == 0 {
		return "(empty)"
	}
	return strings.Join(l.lines, "\n")
}
