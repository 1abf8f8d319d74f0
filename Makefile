# make rpm: the SRPM and the noarch RPMs in dist/rpm/, built with rpmbuild from the sdist.
# On a distribution whose rpm lacks Fedora's macro packages (Debian) the fallbacks in
# packaging/rpm/macros.non-rpm-distro are loaded and BuildRequires are not checked.
VERSION := $(shell /usr/bin/python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])' 2>/dev/null || echo 0.1.0)
TOP := $(CURDIR)/dist/rpm/build
RPMFLAGS := --define "_topdir $(TOP)"
ifeq ($(shell rpm -q --quiet python3-rpm-macros 2>/dev/null && echo yes),)
RPMFLAGS += --load $(CURDIR)/packaging/rpm/macros.non-rpm-distro --nodeps
# %check's pytest: the checkout's venv (Debian's /usr/bin/python3 has none)
ifneq ($(wildcard $(CURDIR)/.venv/bin/python),)
RPMFLAGS += --define "kvmha_pytest $(CURDIR)/.venv/bin/python -m pytest"
else
RPMFLAGS += --nocheck
endif
endif

.PHONY: rpm sdist clean
sdist:
	rm -rf dist/sdist
	cd / && /usr/bin/python3 -m build --sdist --no-isolation --outdir $(CURDIR)/dist/sdist $(CURDIR)

rpm: sdist
	rm -rf $(TOP)
	mkdir -p $(TOP)/SOURCES $(TOP)/SPECS
	cp dist/sdist/kvmha-$(VERSION).tar.gz $(TOP)/SOURCES/
	cp packaging/rpm/kvmha.spec $(TOP)/SPECS/
	rpmbuild $(RPMFLAGS) -ba $(TOP)/SPECS/kvmha.spec
	cp $(TOP)/SRPMS/*.src.rpm $(TOP)/RPMS/noarch/*.rpm dist/rpm/
	@ls -1 dist/rpm/*.rpm

clean:
	rm -rf dist build *.egg-info
