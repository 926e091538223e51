"""center-controller: the building controller of a community service center."""
