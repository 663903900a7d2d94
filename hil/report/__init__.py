"""Reports of a run: summary.json, Allure results, the release gate and the signed evidence bundle."""
