package pgserver

import (
	"errors"
	"strings"
	"testing"
)

func TestStartWithoutPostgres(t *testing.T) {
	// Not parallel: it changes the environment and binGlob.
	t.Setenv(ForceClusterEnv, "1")
	t.Setenv("PATH", t.TempDir())
	old := binGlob
	binGlob = t.TempDir() + "/*/bin"
	defer func() { binGlob = old }()

	_, _, err := Start(t.Context(), t.Logf)
	if !errors.Is(err, ErrNoServer) {
		t.Fatalf("Start = %v, want ErrNoServer", err)
	}
	for _, want := range []string{"apt-get install postgresql", "DATABASE_URL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	t.Log(err)
}

func TestCompareVersions(t *testing.T) {
	t.Parallel()
	if compareVersions("15", "9.6") <= 0 || compareVersions("9.6", "10") >= 0 || compareVersions("16", "16") != 0 {
		t.Error("compareVersions orders versions wrongly")
	}
}
