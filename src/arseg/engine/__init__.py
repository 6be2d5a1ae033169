"""arseg.engine"""
