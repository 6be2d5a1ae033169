"""arseg.data"""
